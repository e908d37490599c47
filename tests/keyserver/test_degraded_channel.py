"""A revocation accepted while the store is down reaches a connected car over the real channel and
is enforced there; after the journal's replay the car converges with the ledger (its sequence at
or above the ledger's) and later revocations still reach it (keyserver.journal's scheme)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keycore import Reason
from keycore.cose import holder_id
from keyserver.app import JOURNAL, REPLAYER
from keyserver.issuance import MAX_TOKEN_LIFETIME
from keyserver.models import RevocationEntry, RevocationKind
from tests.keyserver.flaky_store import FlakyStore
from tests.keyserver.keys_harness import KEYS, REVOKE, VIN, Api, Person
from tests.vehicle_agent.channel_harness import frames_in, hub_until, register, start_car


@pytest.fixture
def api(flaky_api: Api) -> Api:
    """The keyserver on a store that fails on demand (tests/keyserver/conftest.py)."""
    return flaky_api


@pytest.fixture
async def owner(api: Api) -> Person:
    return await api.person("owner")


async def test_a_revocation_during_an_outage_reaches_the_car_and_converges_after_replay(
    api: Api, owner: Person, flaky: FlakyStore, tmp_path: Path
) -> None:
    vehicle_key = await register(api, owner)
    driver = await api.person("driver")
    driver_key = await api.share(owner, driver)
    gone = await api.person("gone")
    gone_key = await api.share(owner, gone)
    assert (await api.call(owner, "POST", REVOKE, key_id=gone_key["key_id"])).status == 200
    other = await api.person("other")
    other_key = await api.share(owner, other)
    later = await api.person("later")
    later_key = await api.share(owner, later)
    await api.call(owner, "GET", KEYS, proof=False, vin=VIN)  # known here from before
    car = await start_car(api, tmp_path, vehicle_key)
    try:
        await hub_until(api, lambda: frames_in(api, "sync") >= 1)
        ledger_before, _ = await flaky.inner.revocations(VIN)
        await car.until(lambda: car.vehicle.revocations.sequence >= ledger_before)
        assert car.decide(driver.phone, driver_key["token"]).allowed

        flaky.fail()
        reply = await api.call(owner, "POST", REVOKE, key_id=driver_key["key_id"])
        assert reply.status == 202, reply.data
        await car.until(lambda: car.vehicle.revocations.sequence > ledger_before)
        assert car.decide(driver.phone, driver_key["token"]).reason is Reason.REVOKED
        issued = car.vehicle.revocations.sequence
        assert [r.sequence for r in api.app[JOURNAL].open_lists()] == [issued]

        # another process revokes first, at the very sequence the car holds (without a push)
        flaky.recover()
        cutoff = api.clock.now + 1
        foreign = RevocationEntry(
            RevocationKind.HOLDER, holder_id(other.phone.xy), cutoff, cutoff + MAX_TOKEN_LIFETIME
        )
        assert await flaky.inner.append_revocations(VIN, [foreign]) == issued
        await api.app[REPLAYER].replay_once()
        ledger, _ = await flaky.inner.revocations(VIN)
        assert ledger > issued  # moved past every sequence signed during the outage
        assert api.app[JOURNAL].open_lists() == []
        await car.until(lambda: car.vehicle.revocations.sequence >= ledger)
        assert car.vehicle.revocations.sequence == ledger
        assert car.decide(driver.phone, driver_key["token"]).reason is Reason.REVOKED
        assert car.decide(gone.phone, gone_key["token"]).reason is Reason.REVOKED
        assert car.decide(other.phone, other_key["token"]).reason is Reason.REVOKED

        # and a normal revocation afterwards still reaches the car
        assert car.decide(later.phone, later_key["token"]).allowed
        normal = await api.call(owner, "POST", REVOKE, key_id=later_key["key_id"])
        assert normal.status == 200
        sequence = normal.body["revocation_sequence"]
        await car.until(lambda: car.vehicle.revocations.sequence >= sequence)
        assert car.decide(later.phone, later_key["token"]).reason is Reason.REVOKED
    finally:
        await car.link.stop()
