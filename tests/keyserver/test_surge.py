"""THE SURGE TEST (issue 6, G6): a real keyserver process on loopback, phones and cars at a normal
load and then at ten times it (lab.bench.surge). Critical requests keep ≥ 99 % success, sheddable
ones are shed with 429 + Retry-After, nothing answers 5xx, and the clients' measured retry ratio
stays within their budget. The figures are printed; nothing here asserts a time."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from keyserver.admission import Criticality
from lab.bench.surge import Phase, SurgePlan, run_surge
from lab.bench.surge_setup import set_up
from lab.processes.app import AppServer
from lab.processes.keyserver import STAGING_RATE_LIMITS, keyserver_command, keyserver_env

# The server's limits are set where a 4-phone load never reaches and a 40-phone one does: the
# sheddable limit below the surge's concurrency, the hard limit above phones and cars together.
LIMITS = {"PHONEKEY_SHED_SHEDDABLE_AT": "12", "PHONEKEY_MAX_IN_FLIGHT": "64"}


def keyserver(work: Path, secret: str) -> AppServer:
    env = keyserver_env(
        port=0,
        data_dir=work / "data",
        secret=secret,
        log_level="info",  # every request logged, as in production
        settings={**STAGING_RATE_LIMITS, **LIMITS},  # one account pairs and commands every car
    )
    return AppServer(keyserver_command(), workdir=work, env=env, name="keyserver")


async def surge(tmp_path: Path, plan: SurgePlan, capsys: pytest.CaptureFixture[str]) -> None:
    secret = secrets.token_urlsafe(24)
    with keyserver(tmp_path, secret) as server:
        population = await set_up(server.url, secret, cars=plan.cars * plan.factor)
        normal, surged = await run_surge(server.url, population, plan)
    with capsys.disabled():
        print()
        for phase in (normal, surged):
            print(json.dumps(phase.summary()))
    check(normal, surged)


def check(normal: Phase, surged: Phase) -> None:
    for phase in (normal, surged):
        critical = [phase.tallies[c] for c in (Criticality.CRITICAL, Criticality.CRITICAL_PLUS)]
        for tally in critical:
            assert tally.logical > 0
            assert tally.success >= 0.99, phase.summary()
        for tally in phase.tallies.values():
            assert tally.server_errors == 0, phase.summary()  # never a 5xx
            assert tally.statuses[0] == 0, phase.summary()  # never a hang or a dropped answer
            assert tally.without_retry_after == 0, phase.summary()
        assert phase.retry_ratio <= phase.retry_allowance, phase.summary()
    assert normal.tallies[Criticality.SHEDDABLE].shed == 0, normal.summary()
    sheddable = surged.tallies[Criticality.SHEDDABLE]
    assert sheddable.shed > 0, surged.summary()  # the surge did overload the server
    assert surged.phones == 10 * normal.phones


async def test_a_tenfold_surge_sheds_sheddable_work_and_keeps_critical_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await surge(tmp_path, SurgePlan(), capsys)


@pytest.mark.slow
async def test_a_longer_tenfold_surge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = SurgePlan(phones=8, cars=2, requests_per_phone=150, connects_per_car=60, max_phase_s=60)
    await surge(tmp_path, plan, capsys)
