"""Keys over HTTP: owner keys, sharing, refresh, suspend/resume/revoke, revocation lists, and the
authorization matrix. Every answer is checked against its documented schema (keys_harness)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keycore import (
    Action,
    ChallengeBook,
    Reason,
    RevocationState,
    SoftwareSigner,
    TrustedClock,
    UnlockRequest,
    decide,
    prove,
)
from keycore.cose import point_bytes
from keycore.request_proof import HEADER, sign_request
from keycore.revocation import read_revocation_list
from keyserver.app import METRICS, SERVICES, create_app
from keyserver.config import build
from keyserver.models import KeyStatus, Vehicle
from tests.keyserver.keys_harness import (
    ACCEPT,
    DAY,
    INVITATIONS,
    KEYS,
    OTHER_VIN,
    RESUME,
    REVOCATIONS,
    REVOKE,
    SUSPEND,
    TOKEN,
    VIN,
    Api,
    Clock,
    Person,
    token_bytes,
)


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any, clock: Clock) -> Api:
    app = create_app(build({"data_dir": str(tmp_path)}))
    return Api(app, await aiohttp_client(app), clock)


@pytest.fixture
async def owner(api: Api) -> Person:
    person = await api.person("owner")
    await api.vehicle(person)
    return person


def issued(api: Api, role: str) -> float:
    value = api.app[METRICS].registry.get_sample_value(
        "keyserver_tokens_issued_total", {"role": role}
    )
    return value or 0.0


# happy paths


async def test_owner_key_and_refresh_give_tokens_a_car_accepts(api: Api, owner: Person) -> None:
    first = await api.owner_key(owner)
    now = api.clock.now
    assert first["role"] == "owner"
    assert first["token_not_before"] == now
    assert first["token_expires_at"] == now + 7 * DAY  # the configured owner lifetime
    assert first["refresh_after"] == now + 4 * DAY  # refresh_ahead_s = 3 days before expiry
    for action in Action:
        assert api.check(first["token"], action=action) is None
    assert api.check(first["token"], vin=OTHER_VIN) is Reason.WRONG_VEHICLE

    api.clock.advance(4 * DAY)
    reply = await api.call(owner, "POST", TOKEN, key_id=first["key_id"])
    assert reply.status == 200
    fresh = reply.body
    assert fresh["key_id"] == first["key_id"]
    assert fresh["token_expires_at"] == api.clock.now + 7 * DAY
    assert fresh["token"] != first["token"]
    assert api.check(fresh["token"], action=Action.START) is None
    assert issued(api, "owner") == 2

    reply = await api.call(owner, "GET", KEYS, vin=VIN)
    assert reply.status == 200
    (key,) = reply.body["keys"]
    assert key["key_id"] == first["key_id"]
    assert (key["role"], key["status"], key["not_after"]) == ("owner", "active", None)
    assert key["device_id"] == owner.phone.device_id
    assert set(key["entitlements"]) == {a.name.lower() for a in Action}


async def test_share_and_accept_a_scheduled_guest_key(api: Api, owner: Person) -> None:
    guest = await api.person("guest")
    now = api.clock.now
    schedule = {
        "utc_offset": 0,
        "windows": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00",
                     "end": "24:00"}],
    }  # fmt: skip
    invitation_id = await api.invite(
        owner,
        "guest",
        entitlements=["unlock", "lock"],
        not_after=now + 5 * DAY,
        schedule=schedule,
        invitation_ttl_s=3600,
    )
    reply = await api.accept(guest, invitation_id)
    assert reply.status == 201
    key = reply.body
    assert key["role"] == "guest"
    assert key["token_expires_at"] == now + 2 * DAY  # the configured guest lifetime
    assert key["refresh_after"] == now + DAY  # half its life: it is shorter than refresh-ahead
    assert api.check(key["token"], action=Action.UNLOCK) is None
    assert api.check(key["token"], action=Action.START) is Reason.NOT_ENTITLED
    assert issued(api, "guest") == 1

    again = await api.accept(await api.person("other"), invitation_id)
    assert (again.status, again.code) == (404, "invitation_not_found")  # single use

    reply = await api.call(guest, "GET", KEYS, vin=VIN)
    (listed,) = reply.body["keys"]
    assert listed["schedule"] == schedule
    assert listed["entitlements"] == ["unlock", "lock"]
    assert (listed["not_before"], listed["not_after"]) == (now, now + 5 * DAY)
    assert listed["account_id"] == guest.account_id


async def test_a_schedule_and_a_window_end_travel_into_the_token(api: Api, owner: Person) -> None:
    valet = await api.person("valet")
    if api.clock.now % 3600 == 0:
        api.clock.advance(1)  # so the hour below ends before the key does
    now = api.clock.now
    # the current hour only, written in UTC+2 (the offset is whole hours, so are the windows)
    hour = (now // 3600 + 2) % 24
    window = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
              "start": f"{hour:02d}:00", "end": f"{hour + 1:02d}:00"}  # fmt: skip
    key = await api.share(
        owner,
        valet,
        "valet",
        not_after=now + 3600,
        schedule={"utc_offset": 120, "windows": [window]},
    )
    assert key["token_expires_at"] == now + 3600  # the key's end, before the valet lifetime
    assert api.check(key["token"]) is None
    next_hour = now - now % 3600 + 3600
    assert api.check(key["token"], at=next_hour) is Reason.OUTSIDE_SCHEDULE
    assert api.check(key["token"], action=Action.TRUNK) is Reason.NOT_ENTITLED
    api.clock.advance(3600)
    reply = await api.call(valet, "POST", TOKEN, key_id=key["key_id"])
    assert (reply.status, reply.code) == (403, "key_not_valid_now")


async def test_a_key_that_starts_later_gets_its_token_when_it_can(api: Api, owner: Person) -> None:
    guest = await api.person("guest")
    start = api.clock.now + 20 * DAY
    key = await api.share(owner, guest, "guest", not_before=start, not_after=start + 3 * DAY)
    assert key["token"] is None
    assert key["refresh_after"] == start + 2 * DAY - 7 * DAY + 1
    reply = await api.call(guest, "POST", TOKEN, key_id=key["key_id"])
    assert (reply.status, reply.code) == (403, "key_not_valid_now")

    api.clock.now = key["refresh_after"]
    reply = await api.call(guest, "POST", TOKEN, key_id=key["key_id"])
    assert reply.status == 200
    assert (reply.body["token_not_before"], reply.body["token_expires_at"]) == (
        start,
        start + 2 * DAY,
    )
    assert api.check(reply.body["token"]) is Reason.NOT_YET_VALID
    assert api.check(reply.body["token"], at=start) is None


async def test_suspend_then_resume_a_lost_phone(api: Api, owner: Person) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    reply = await api.call(owner, "POST", SUSPEND, key_id=key["key_id"])
    assert reply.status == 200
    assert reply.body["key"]["status"] == "suspended"
    assert reply.body["revocation_sequence"] == 1

    lists = await api.revocation_list(driver)
    assert (lists.status, lists.code) == (404, "unknown_vehicle")  # no active key: no list
    lists = await api.revocation_list(owner)
    assert lists.status == 200
    car = api.car(lists.data)
    assert api.check(key["token"], revocations=car) is Reason.REVOKED

    # the suspended key cannot refresh
    reply = await api.call(driver, "POST", TOKEN, key_id=key["key_id"])
    assert (reply.status, reply.code) == (403, "key_suspended")
    # idempotent: a second suspend (a retry) keeps the key suspended
    again = await api.call(owner, "POST", SUSPEND, key_id=key["key_id"])
    assert (again.status, again.body["key"]["status"]) == (200, "suspended")

    # resuming within the second of the cutoff would sign tokens the car refuses: wait
    reply = await api.call(owner, "POST", RESUME, key_id=key["key_id"])
    assert (reply.status, reply.code) == (409, "too_soon")
    assert reply.headers["Retry-After"] == "1"
    api.clock.advance(1)
    reply = await api.call(owner, "POST", RESUME, key_id=key["key_id"])
    assert (reply.status, reply.body["key"]["status"]) == (200, "active")
    reply = await api.call(driver, "POST", TOKEN, key_id=key["key_id"])
    assert reply.status == 200
    assert api.check(reply.body["token"], revocations=car) is None  # newer than the cutoff
    assert api.check(key["token"], revocations=car) is Reason.REVOKED  # the old one stays dead


async def test_a_holder_gives_up_its_key_and_revoking_again_is_harmless(
    api: Api, owner: Person
) -> None:
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    reply = await api.call(driver, "POST", REVOKE, key_id=key["key_id"])
    assert (reply.status, reply.body["key"]["status"]) == (200, "revoked")
    assert reply.body["revocation_sequence"] == 1
    reply = await api.call(driver, "POST", TOKEN, key_id=key["key_id"])
    assert (reply.status, reply.code) == (403, "key_revoked")
    for path in (SUSPEND, RESUME):
        reply = await api.call(owner, "POST", path, key_id=key["key_id"])
        assert (reply.status, reply.code) == (409, "key_revoked")

    # the same device is given a new key; the owner retries the old revocation later
    api.clock.advance(1)
    newer = await api.share(owner, driver)
    reply = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
    assert (reply.status, reply.body["revocation_sequence"]) == (200, 1)  # no new entry
    car = api.car((await api.revocation_list(owner)).data)
    assert api.check(newer["token"], revocations=car) is None
    assert api.check(key["token"], revocations=car) is Reason.REVOKED


async def test_revoke_every_key_of_a_device_or_of_an_account(api: Api, owner: Person) -> None:
    driver, guest = await api.person("driver"), await api.person("guest")
    driver_key = await api.share(owner, driver)
    guest_key = await api.share(owner, guest, "guest")
    reply = await api.call(
        owner, "POST", REVOCATIONS, {"device_id": driver.phone.device_id}, vin=VIN
    )
    assert reply.status == 200
    revoked = {"revoked": [driver_key["key_id"]], "revocation_sequence": 1, "changed": True}
    assert reply.body == revoked
    reply = await api.call(owner, "POST", REVOCATIONS, {"account_id": guest.account_id}, vin=VIN)
    assert reply.body == {
        "revoked": [guest_key["key_id"]],
        "revocation_sequence": 2,
        "changed": True,
    }
    # the same again: answered, and nothing changes (no entry, no sequence)
    reply = await api.call(owner, "POST", REVOCATIONS, {"account_id": guest.account_id}, vin=VIN)
    assert reply.body == {
        "revoked": [guest_key["key_id"]],
        "revocation_sequence": 2,
        "changed": False,
    }
    car = api.car((await api.revocation_list(owner)).data)
    assert api.check(driver_key["token"], revocations=car) is Reason.REVOKED
    assert api.check(guest_key["token"], revocations=car) is Reason.REVOKED

    stranger = await api.person("stranger")
    for body, expected in (
        ({"account_id": stranger.account_id}, (404, "unknown_key")),
        ({"device_id": stranger.phone.device_id, "account_id": "x"}, (400, "missing_field")),
        ({}, (400, "missing_field")),
        ({"holder": "x"}, (400, "unknown_field")),
        ({"device_id": 7}, (400, "invalid_field")),
    ):
        reply = await api.call(owner, "POST", REVOCATIONS, body, vin=VIN)
        assert (reply.status, reply.code) == expected, body


async def test_revocation_lists_full_delta_and_up_to_date(api: Api, owner: Person) -> None:
    reply = await api.revocation_list(owner)
    assert (reply.status, reply.headers["PK-Revocation-Sequence"]) == (204, "0")
    people = [await api.person(f"p{n}") for n in range(3)]
    keys = [await api.share(owner, p) for p in people]
    for key in keys[:2]:
        await api.call(owner, "POST", REVOKE, key_id=key["key_id"])

    full = await api.revocation_list(owner)
    assert (full.status, full.headers["PK-Revocation-Sequence"]) == (200, "2")
    car = api.car(full.data)
    assert car.sequence == 2
    await api.call(owner, "POST", REVOKE, key_id=keys[2]["key_id"])
    delta = await api.revocation_list(owner, since=2)
    document = read_revocation_list(delta.data, trust=api.trust(), now=api.clock.now)
    assert (document.base, document.sequence, len(document.holders)) == (2, 3, 1)
    car = car.apply(delta.data, trust=api.trust(), now=api.clock.now)
    assert all(api.check(k["token"], revocations=car) is Reason.REVOKED for k in keys)
    assert document.holders[0].until == document.holders[0].before + 30 * DAY

    reply = await api.revocation_list(owner, since=3)
    assert (reply.status, reply.headers["PK-Revocation-Sequence"]) == (204, "3")
    reply = await api.revocation_list(owner, since=4)
    assert (reply.status, reply.code) == (400, "since_ahead")
    for since in ("-1", "x", "", "99999999999999999999"):
        reply = await api.call(owner, "GET", REVOCATIONS, vin=VIN, query=f"since={since}")
        assert (reply.status, reply.code) == (400, "invalid_since")
    reply = await api.call(owner, "GET", REVOCATIONS, vin="INVALID")
    assert (reply.status, reply.code) == (400, "invalid_vin")


async def test_end_to_end_a_revoked_guest_is_refused_by_a_car(api: Api, owner: Person) -> None:
    guest = await api.person("guest")
    owner_token = (await api.owner_key(owner))["token"]
    guest_token = (await api.share(owner, guest, "guest"))["token"]
    reply = await api.call(owner, "POST", REVOKE, key_id=await _key_of(api, guest))
    assert reply.status == 200

    # the owner's phone carries the list to a car that is offline
    lists = await api.revocation_list(owner)
    trust = api.trust()
    revocations = RevocationState(VIN).apply(lists.data, trust=trust, now=api.clock.now)
    clock = TrustedClock.provisioned(now=api.clock.now, mono=0.0, boot_id="boot")
    challenges = ChallengeBook()

    def unlock(token: str, person: Person) -> Any:
        challenge = challenges.issue(mono=1.0)
        raw = token_bytes(token)
        proof = prove(person.phone.key, challenge=challenge, vin=VIN, action=Action.UNLOCK,
                      token=raw)  # fmt: skip
        return decide(
            UnlockRequest(raw, Action.UNLOCK, challenge, proof),
            vin=VIN,
            trust=trust,
            revocations=revocations,
            clock=clock,
            challenges=challenges,
            mono=1.0,
        )

    denied = unlock(guest_token, guest)
    assert (denied.allowed, denied.reason) == (False, Reason.REVOKED)
    assert unlock(owner_token, owner).allowed
    assert api.check(guest_token, revocations=revocations) is Reason.REVOKED
    assert api.check(owner_token, revocations=revocations) is None


async def _key_of(api: Api, person: Person) -> str:
    (key,) = [k for k in await api.store.keys_of_vehicle(VIN) if k.account_id == person.account_id]
    return key.key_id


# the authorization matrix

ROLES = ("owner", "driver", "guest", "valet", "service", "stranger")
HOLDERS = ROLES[1:5]


@dataclass
class Fleet:
    """An owned car, one key per role, a bystander driver whose key others act on, a stranger."""

    people: dict[str, Person]
    keys: dict[str, str]
    bystander: str  # the bystander's key id


@pytest.fixture
async def fleet(api: Api, owner: Person) -> Fleet:
    people = {"owner": owner}
    keys = {"owner": (await api.owner_key(owner))["key_id"]}
    for role in HOLDERS:
        people[role] = await api.person(role)
        keys[role] = (await api.share(owner, people[role], role))["key_id"]
    bystander = (await api.share(owner, await api.person("bystander")))["key_id"]
    people["stranger"] = await api.person("stranger")
    return Fleet(people, keys, bystander)


async def _share(api: Api, fleet: Fleet, role: str) -> Any:
    body = {"role": "guest", "not_after": api.clock.now + DAY}
    return await api.call(fleet.people[role], "POST", INVITATIONS, body, vin=VIN)


async def _list(api: Api, fleet: Fleet, role: str) -> Any:
    reply = await api.call(fleet.people[role], "GET", KEYS, vin=VIN)
    if reply.status == 200:  # the owner sees all six keys, a holder its own
        assert len(reply.body["keys"]) == (6 if role == "owner" else 1)
    return reply


async def _suspend_other(api: Api, fleet: Fleet, role: str) -> Any:
    return await api.call(fleet.people[role], "POST", SUSPEND, key_id=fleet.bystander)


async def _revoke_owner(api: Api, fleet: Fleet, role: str) -> Any:
    return await api.call(fleet.people[role], "POST", REVOKE, key_id=fleet.keys["owner"])


async def _revoke_own(api: Api, fleet: Fleet, role: str) -> Any:
    key_id = fleet.keys.get(role, fleet.bystander)  # a stranger has none: it tries another's
    return await api.call(fleet.people[role], "POST", REVOKE, key_id=key_id)


async def _refresh_own(api: Api, fleet: Fleet, role: str) -> Any:
    key_id = fleet.keys.get(role, fleet.bystander)
    return await api.call(fleet.people[role], "POST", TOKEN, key_id=key_id)


async def _read_list(api: Api, fleet: Fleet, role: str) -> Any:
    return await api.revocation_list(fleet.people[role])


OPERATIONS = {
    "share": _share,
    "list_keys": _list,
    "suspend_another_key": _suspend_other,
    "revoke_the_owner_key": _revoke_owner,
    "revoke_own_key": _revoke_own,
    "refresh_own_key": _refresh_own,
    "read_revocation_list": _read_list,
}

_NOT_OWNER = (403, "not_owner")
EXPECTED: dict[str, dict[str, tuple[int, str | None]]] = {
    "share": {"owner": (201, None), **dict.fromkeys(HOLDERS, _NOT_OWNER),
              "stranger": (404, "unknown_vehicle")},
    "list_keys": {**dict.fromkeys(ROLES[:5], (200, None)), "stranger": (404, "unknown_vehicle")},
    "suspend_another_key": {"owner": (200, None), **dict.fromkeys(HOLDERS, _NOT_OWNER),
                            "stranger": (404, "unknown_key")},
    "revoke_the_owner_key": {"owner": (200, None), **dict.fromkeys(HOLDERS, _NOT_OWNER),
                             "stranger": (404, "unknown_key")},
    "revoke_own_key": {**dict.fromkeys(ROLES[:5], (200, None)), "stranger": (404, "unknown_key")},
    "refresh_own_key": {**dict.fromkeys(ROLES[:5], (200, None)),
                        "stranger": (404, "unknown_key")},
    "read_revocation_list": {**dict.fromkeys(ROLES[:5], (204, None)),
                             "stranger": (404, "unknown_vehicle")},
}  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_authorization_matrix(api: Api, fleet: Fleet, operation: str, role: str) -> None:
    before = await api.state()
    reply = await OPERATIONS[operation](api, fleet, role)
    assert (reply.status, reply.code) == EXPECTED[operation][role]
    if reply.status >= 400:
        assert await api.state() == before  # a refusal changes nothing


# refusals


async def test_a_bearer_session_without_the_device_proof_changes_nothing(
    api: Api, fleet: Fleet
) -> None:
    owner, driver = fleet.people["owner"], fleet.people["driver"]
    invitation_id = await api.invite(owner)
    before = await api.state()
    attempts: list[tuple[Person, str, Any, dict[str, Any]]] = [
        (owner, KEYS, {"device_id": owner.phone.device_id}, {"vin": VIN}),
        (owner, INVITATIONS, {"role": "driver"}, {"vin": VIN}),
        (driver, ACCEPT, {"device_id": driver.phone.device_id}, {"invitation_id": invitation_id}),
        (owner, SUSPEND, None, {"key_id": fleet.keys["driver"]}),
        (owner, RESUME, None, {"key_id": fleet.keys["driver"]}),
        (owner, REVOKE, None, {"key_id": fleet.keys["driver"]}),
        (driver, REVOKE, None, {"key_id": fleet.keys["driver"]}),
        (owner, REVOCATIONS, {"account_id": driver.account_id}, {"vin": VIN}),
        (driver, TOKEN, None, {"key_id": fleet.keys["driver"]}),
    ]
    for who, path, body, params in attempts:
        reply = await api.call(who, "POST", path, body, proof=False, **params)
        assert (reply.status, reply.code) == (401, "device_proof_required"), path
    assert await api.state() == before
    assert (await api.accept(fleet.people["stranger"], invitation_id)).status == 201  # unspent


async def test_proofs_from_the_wrong_device_are_refused(api: Api, fleet: Fleet) -> None:
    owner, driver = fleet.people["owner"], fleet.people["driver"]
    key_id = fleet.keys["driver"]
    # another account's phone
    reply = await api.call(owner, "POST", SUSPEND, key_id=key_id, phone=driver.phone)
    assert (reply.status, reply.code) == (403, "unknown_device")
    # the driver's second phone may not refresh the first phone's key
    second = await api.phone(driver.account_id)
    reply = await api.call(driver, "POST", TOKEN, key_id=key_id, phone=second)
    assert (reply.status, reply.code) == (403, "wrong_device")
    # someone else's key is not found at all
    reply = await api.call(driver, "POST", TOKEN, key_id=fleet.keys["guest"])
    assert (reply.status, reply.code) == (404, "unknown_key")
    reply = await api.call(driver, "POST", TOKEN, key_id="no.such.key")
    assert (reply.status, reply.code) == (404, "unknown_key")


async def test_owner_key_refusals(api: Api, owner: Person) -> None:
    other = await api.person("other")
    reply = await api.call(owner, "POST", KEYS, {"device_id": other.phone.device_id}, vin=VIN)
    assert (reply.status, reply.code) == (403, "unknown_device")
    await api.owner_key(owner)
    reply = await api.call(owner, "POST", KEYS, {"device_id": owner.phone.device_id}, vin=VIN)
    assert (reply.status, reply.code) == (409, "device_has_key")
    second = await api.phone(owner.account_id)
    assert (await api.owner_key(owner, second))["role"] == "owner"  # another own device: fine
    reply = await api.call(owner, "POST", KEYS, {"device_id": "x", "more": 1}, vin=VIN)
    assert (reply.status, reply.code) == (400, "unknown_field")
    reply = await api.call(owner, "POST", KEYS, {"device_id": owner.phone.device_id}, vin=OTHER_VIN)
    assert (reply.status, reply.code) == (404, "unknown_vehicle")


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        ({"role": "owner"}, "invalid_field"),
        ({"role": "guest"}, "invalid_field"),  # a guest key needs an end
        ({"role": "guest", "not_after": "+31d"}, "invalid_field"),  # over 30 days
        ({"role": "driver", "entitlements": ["unlock", "manage_keys"]}, "entitlement_not_allowed"),
        ({"role": "valet", "entitlements": ["trunk"]}, "entitlement_not_allowed"),
        ({"role": "driver", "entitlements": []}, "invalid_field"),
        ({"role": "driver", "entitlements": ["unlock", "unlock"]}, "invalid_field"),
        ({"role": "driver", "entitlements": ["fly"]}, "invalid_field"),
        ({"role": "driver", "not_after": "-1s"}, "invalid_field"),  # already over
        ({"role": "driver", "not_before": "+2d", "not_after": "+1d"}, "invalid_field"),
        ({"role": "driver", "not_before": True}, "invalid_field"),
        ({"role": "driver", "invitation_ttl_s": 8 * DAY}, "invalid_field"),
        ({"role": "driver", "schedule": {"utc_offset": 0, "windows": []}}, "invalid_field"),
        (
            {"role": "driver", "schedule": {"utc_offset": 0, "windows": [
                {"days": ["mon"], "start": "10:00", "end": "09:00"}]}},
            "invalid_field",
        ),
        (
            {"role": "driver", "schedule": {"utc_offset": 0, "windows": [
                {"days": ["funday"], "start": "10:00", "end": "11:00"}]}},
            "invalid_field",
        ),
        ({"role": "driver", "admin": True}, "unknown_field"),
        ({}, "missing_field"),
    ],
)  # fmt: skip
async def test_share_refusals(
    api: Api, owner: Person, grant: dict[str, Any], expected: str
) -> None:
    now = api.clock.now
    offsets = {"+31d": now + 31 * DAY, "+2d": now + 2 * DAY, "+1d": now + DAY, "-1s": now - 1}
    body = {k: offsets.get(v, v) if isinstance(v, str) else v for k, v in grant.items()}
    reply = await api.call(owner, "POST", INVITATIONS, body, vin=VIN)
    assert (reply.status, reply.code) == (400, expected)


async def test_accept_refusals_keep_the_invitation_when_nothing_was_granted(
    api: Api, owner: Person
) -> None:
    friend = await api.person("friend")
    invitation_id = await api.invite(owner)
    reply = await api.accept(owner, invitation_id)
    assert (reply.status, reply.code) == (403, "own_invitation")
    other = await api.person("other")
    reply = await api.call(
        friend, "POST", ACCEPT, {"device_id": other.phone.device_id}, invitation_id=invitation_id
    )
    assert (reply.status, reply.code) == (403, "unknown_device")
    await api.share(owner, friend)  # the friend's phone has a key now
    reply = await api.accept(friend, invitation_id)
    assert (reply.status, reply.code) == (409, "device_has_key")
    assert (await api.accept(other, invitation_id)).status == 201  # still there

    expiring = await api.invite(owner, invitation_ttl_s=60)
    api.clock.advance(61)
    reply = await api.accept(await api.person("late"), expiring)
    assert (reply.status, reply.code) == (404, "invitation_not_found")


async def test_an_invitation_dies_with_its_inviter_s_ownership(api: Api, owner: Person) -> None:
    invitation_id = await api.invite(owner)
    new_owner = await api.person("buyer")
    assert await api.store.set_owner(
        VIN, owner_id=new_owner.account_id, expected=owner.account_id, now=api.clock.now
    )
    reply = await api.accept(await api.person("friend"), invitation_id)
    assert (reply.status, reply.code) == (404, "invitation_not_found")


async def test_bodies_are_bounded_and_exact(api: Api, fleet: Fleet) -> None:
    driver, key_id = fleet.people["driver"], fleet.keys["driver"]
    reply = await api.call(driver, "POST", TOKEN, {"extra": 1}, key_id=key_id)
    assert (reply.status, reply.code) == (400, "unknown_field")
    assert (await api.call(driver, "POST", TOKEN, {}, key_id=key_id)).status == 200
    owner = fleet.people["owner"]
    reply = await api.call(owner, "POST", INVITATIONS, {"role": "x" * 70_000}, vin=VIN)
    assert (reply.status, reply.code) == (413, "body_too_large")
    response = await api.client.post(
        f"/v1/vehicles/{VIN}/invitations",
        data=b"role=driver",
        headers={"Authorization": f"Bearer {owner.session}", "Content-Type": "text/plain"},
    )
    assert response.status == 415


async def test_ownership_transfer_revokes_every_key_through_revoke_keys(
    api: Api, fleet: Fleet
) -> None:
    holders = api.app[SERVICES].holders

    tokens = {}
    for role in ROLES[:5]:
        reply = await api.call(fleet.people[role], "POST", TOKEN, key_id=fleet.keys[role])
        tokens[role] = reply.body["token"]
    done = await holders.revoke_keys(VIN, await api.store.keys_of_vehicle(VIN), now=api.clock.now)
    assert done.sequence == 6  # one holder entry per device
    assert len(done.changed) == 6
    assert {k.status for k in await api.store.keys_of_vehicle(VIN)} == {KeyStatus.REVOKED}
    car = api.car((await api.revocation_list(fleet.people["owner"])).data)
    assert all(api.check(t, revocations=car) is Reason.REVOKED for t in tokens.values())
    with pytest.raises(ValueError, match="belong"):
        await holders.revoke_keys(
            OTHER_VIN, await api.store.keys_of_vehicle(VIN), now=api.clock.now
        )


async def test_the_car_itself_reads_its_list_with_a_vehicle_proof(api: Api, owner: Person) -> None:
    car_key = SoftwareSigner.generate()
    other_vin = "1HGCM82633A004352"
    await api.store.add_vehicle(
        Vehicle(other_vin, point_bytes(car_key.public_key), owner.account_id, api.clock.now)
    )
    path = f"/v1/vehicles/{other_vin}/revocations"

    def proof(signer: SoftwareSigner, device_id: str = other_vin) -> dict[str, str]:
        value = sign_request(
            signer, device_id=device_id, method="GET", path=path, body=b"", timestamp=api.clock.now
        )
        return {HEADER: value}

    response = await api.client.get(path, headers=proof(car_key))
    assert (response.status, response.headers["PK-Revocation-Sequence"]) == (204, "0")
    # another key, another car's id, or the same proof twice: refused
    for headers in (proof(SoftwareSigner.generate()), proof(car_key, device_id=VIN)):
        response = await api.client.get(path, headers=headers)
        assert response.status == 401
    once = proof(car_key)
    assert (await api.client.get(path, headers=once)).status == 204
    response = await api.client.get(path, headers=once)
    assert (response.status, (await response.json())["error"]["code"]) == (
        401,
        "replayed_device_proof",
    )
