"""Random sequences of key operations — share, accept, revoke, a holder's own re-revoke, suspend,
resume, transfer, time passing — never make the keyserver sign or send a revocation list the car
would refuse: every full list, every delta and every channel frame is checked against the car's
own reader and limits after every step (issue 12; G7)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keycore import RevocationState
from keycore.channel import MAX_SERVER_FRAME_BYTES, Revocations, encode
from keycore.revocation import (
    MAX_VEHICLE_HOLDERS,
    WORST_CASE_LIST_BYTES,
    read_revocation_list,
)
from keyserver import auth
from keyserver.app import SERVICES, create_app
from keyserver.config import build
from keyserver.issuance import LEDGER_GRACE_S, MAX_TOKEN_LIFETIME
from keyserver.models import Session
from tests.keyserver.keys_harness import (
    ACCEPT,
    DAY,
    INVITATIONS,
    KEYS,
    NO_RATE_LIMITS,
    RESUME,
    REVOKE,
    SUSPEND,
    VIN,
    Api,
    Clock,
    Person,
)

PEOPLE = MAX_VEHICLE_HOLDERS + 6  # more than a car may hold
OPS = (
    "share", "share", "crowd", "revoke", "own_revoke", "suspend", "resume", "transfer", "tick",
    "age",
)  # fmt: skip


@dataclass
class Model:
    api: Api
    owner: Person
    people: list[Person]
    keys: dict[int, str] = field(default_factory=dict)  # person → their latest key id
    car: RevocationState = field(default_factory=lambda: RevocationState(VIN))
    aged: bool = False  # once: the issuer key made at start-up must stay valid


async def start(api: Api) -> Model:
    people = [await api.person(f"p{n}") for n in range(PEOPLE)]
    owner = people[0]
    await api.vehicle(owner)
    model = Model(api, owner, people)
    model.keys[0] = (await api.owner_key(owner))["key_id"]
    return model


async def step(model: Model, op: str, who: int) -> None:
    api, person = model.api, model.people[who]
    key_id = model.keys.get(who)
    if op == "share" and person is not model.owner:
        reply = await api.call(model.owner, "POST", INVITATIONS, {"role": "driver"}, vin=VIN)
        assert reply.status == 201
        accepted = await api.call(
            person, "POST", ACCEPT, {"device_id": person.phone.device_id},
            invitation_id=reply.body["invitation_id"],
        )  # fmt: skip
        assert accepted.status in (201, 409), accepted.data
        if accepted.status == 201:
            model.keys[who] = accepted.body["key_id"]
    elif op == "crowd":  # eight more shares at once: the car's holder bound is reached
        for n in range(who, who + 8):
            await step(model, "share", 1 + n % (PEOPLE - 1))
    elif op in ("revoke", "suspend", "resume") and key_id is not None:
        path = {"revoke": REVOKE, "suspend": SUSPEND, "resume": RESUME}[op]
        reply = await api.call(model.owner, "POST", path, key_id=key_id)
        assert reply.status in (200, 403, 404, 409), reply.data  # never refused for size
    elif op == "own_revoke" and key_id is not None:
        reply = await api.call(person, "POST", REVOKE, key_id=key_id)
        assert reply.status in (200, 404), reply.data
    elif op == "transfer" and person is not model.owner:
        reply = await api.call(
            model.owner, "POST", "/v1/vehicles/{vin}/transfer",
            {"to_email": f"{person.name}@example.com"}, vin=VIN,
        )  # fmt: skip
        assert reply.status == 200, reply.data
        model.owner = person
        api.clock.advance(2)  # the new owner's key comes after the cutoff of the old keys
        owned = await api.call(person, "POST", KEYS, {"device_id": person.phone.device_id}, vin=VIN)
        assert owned.status in (201, 409), owned.data
        if owned.status == 201:
            model.keys[who] = owned.body["key_id"]
    elif op == "tick":
        api.clock.advance(1 + who)
    elif op == "age" and not model.aged:  # past the ledger's retention: places free up
        model.aged = True
        api.clock.advance(MAX_TOKEN_LIFETIME + LEDGER_GRACE_S + 1)
        owner = model.people.index(model.owner)
        for n, someone in enumerate(model.people):  # everyone signs in again
            token, token_hash = auth.new_session_token()
            await api.store.put_session(
                Session(token_hash, someone.account_id, api.clock.now + DAY)
            )
            model.people[n] = replace(someone, session=token)
        model.owner = model.people[owner]


async def check_lists(model: Model) -> None:
    """Every list the server would give a phone or a car now, against the car's own limits."""
    api = model.api
    sequence, _ = await api.store.revocations(VIN)
    if sequence == 0:
        return
    sinces = sorted({0, model.car.sequence, max(0, sequence - 1)} - {sequence})
    for since in sinces:
        cut = await api.app[SERVICES].issuer.revocation_list(VIN, since=since, now=api.clock.now)
        assert cut.document is not None
        assert cut.complete
        assert len(cut.document) <= WORST_CASE_LIST_BYTES
        assert len(encode(Revocations(cut.document))) <= MAX_SERVER_FRAME_BYTES
        doc = read_revocation_list(cut.document, trust=api.trust(), now=api.clock.now)
        assert len(doc.holders) <= MAX_VEHICLE_HOLDERS
        assert not doc.tokens
        if since == model.car.sequence:  # the car that follows every step applies its delta
            model.car = model.car.apply(cut.document, trust=api.trust(), now=api.clock.now)
    assert len(model.car) <= MAX_VEHICLE_HOLDERS
    _, entries = await api.store.revocations(VIN)
    assert len({(e.kind, e.subject) for e in entries}) == len(entries)  # one per subject


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(OPS), st.integers(1, PEOPLE - 1)), min_size=10, max_size=80
    )
)
async def test_no_operation_sequence_yields_a_list_the_car_refuses(
    ops: list[tuple[str, int]], clock: Clock
) -> None:
    clock.now = Clock().now  # the fixture lives across examples; each starts at today
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(build({"data_dir": str(Path(data_dir)), **NO_RATE_LIMITS}))
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            model = await start(Api(app, client, clock))
            for op, who in ops:
                await step(model, op, who)
                await check_lists(model)
        finally:
            await client.close()
