"""The outage journal cannot be grown at will (review of issue 12, G7).

While the store is down, an acceptance cannot be checked, so the route journals it whatever the
invitation id. Any account this process knows may ask: an outsider with an account and no key
at all, repeating accepts of made-up invitations, must not grow the journal (a queue the replay
reads in one go, in front of the revocations accepted after it) without bound.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from keyserver.acceptance import ACCEPT, MAX_PENDING_ACCEPTANCES
from keyserver.app import JOURNAL, create_app
from keyserver.journal import PENDING
from tests.keyserver.flaky_store import FlakyStore, flaky_config
from tests.keyserver.keys_harness import KEYS, NO_RATE_LIMITS, REVOKE, VIN, Api, Clock, Person

FLOOD = 200


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any, clock: Clock, flaky: FlakyStore) -> Api:
    """The keyserver on the flaky store with its rate limits off: the journal's own bound is
    what is tested, as with many instances, each counting requests on its own."""
    config = replace(flaky_config(tmp_path / "server"), **NO_RATE_LIMITS)
    app = create_app(config, store=flaky)  # type: ignore[arg-type]
    return Api(app, await aiohttp_client(app), clock)


async def known(api: Api, name: str) -> Person:
    """Someone this process has seen (session and devices), as a phone in use would be."""
    person = await api.person(name)
    assert (await api.call(person, "GET", "/v1/devices", proof=False)).status == 200
    return person


def pending_acceptances(api: Api, account_id: str) -> int:
    return sum(
        1
        for op in api.app[JOURNAL].pending()
        if op.kind == ACCEPT and op.state == PENDING and op.payload["account_id"] == account_id
    )


async def test_an_outsider_cannot_flood_the_journal_with_made_up_acceptances(
    api: Api, flaky: FlakyStore
) -> None:
    owner = await known(api, "owner")
    await api.vehicle(owner)
    driver = await api.person("driver")
    key = await api.share(owner, driver)
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)  # the key is known here
    outsider = await known(api, "outsider")
    flaky.fail()
    answers = []
    for _ in range(FLOOD):
        invitation_id = secrets.token_urlsafe(16)
        answers.append(await api.accept(outsider, invitation_id))
    assert pending_acceptances(api, outsider.account_id) <= MAX_PENDING_ACCEPTANCES
    refused = [a for a in answers if a.status != 202]
    assert len(refused) == FLOOD - MAX_PENDING_ACCEPTANCES
    assert {(a.status, a.code) for a in refused} == {(429, "too_many_pending")}
    assert all(int(a.headers["Retry-After"]) > 0 for a in refused)
    # a revocation is never refused for it
    revoked = await api.call(owner, "POST", REVOKE, key_id=key["key_id"])
    assert revoked.status == 202, revoked.data


async def test_a_repeated_acceptance_is_answered_with_the_waiting_one(
    api: Api, flaky: FlakyStore
) -> None:
    owner = await known(api, "owner")
    await api.vehicle(owner)
    invitation = await api.invite(owner)
    driver = await known(api, "driver")
    flaky.fail()
    first = await api.accept(driver, invitation)
    assert first.status == 202, first.data
    for _ in range(2 * MAX_PENDING_ACCEPTANCES):  # a phone retrying: never refused, one row
        again = await api.accept(driver, invitation)
        assert again.status == 202, again.data
        assert again.body["operation_id"] == first.body["operation_id"]
        assert again.body["key_id"] == first.body["key_id"]
    assert pending_acceptances(api, driver.account_id) == 1
