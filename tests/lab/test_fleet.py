"""`phonekey fleet`: simulated cars (in worker processes) against one keyserver on loopback.

The report's arithmetic is in tests/lab/test_fleet_report.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from lab.cli import main
from lab.fleet.run import FleetSettings, run_fleet
from lab.processes.keyserver import OwnKeyserver

FLEET = 1_000


def test_a_thousand_cars_get_a_revocation_and_a_command_and_come_back_spread_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = run_fleet(FleetSettings(vehicles=FLEET, restart=True))
    with capsys.disabled():  # the figures, for the person running the suite
        print(f"\nfleet of {FLEET}:\n{report.to_json()}")
    assert report.online == FLEET
    # the revocation reached every car, and every car then denied the revoked key
    assert report.revocations_sent == report.revocations_reached == FLEET
    assert report.revocations_enforced == FLEET
    # one remote lock per car: each moved once, none twice
    assert report.commands_executed == FLEET
    assert report.commands_doubled == 0
    # the restart: everyone came back, and not all at once — a synchronized burst would put the
    # whole fleet into one 100 ms window (peak_share 1.0)
    restart = report.restart
    assert restart is not None
    assert restart.spread.reconnected == FLEET
    assert restart.spread.all_back_s is not None
    assert restart.spread.peak_share <= 0.5
    assert restart.spread.max_s > restart.spread.first_s
    assert restart.answers.errors == 0


def test_the_command_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "--vehicles", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["online"] == report["revocations_enforced"] == report["commands_executed"] == 3
    assert report["restart"] is None


def test_the_fleet_runs_against_a_keyserver_it_did_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    own = OwnKeyserver(tmp_path, "a-provisioning-secret-for-tests", port=0)
    own.start()
    try:
        assert own.server is not None
        own.port = own.server.port
        root = b64url_encode(point_bytes(own.root()))
        monkeypatch.setenv("PHONEKEY_PROVISIONING_SECRET", own.secret)
        state_dir = tmp_path / "cars"
        argv = ["fleet", "--vehicles", "2", "--keyserver", own.url, "--root-key", root]
        assert main([*argv, "--state-dir", str(state_dir), "--no-command"]) == 0
    finally:
        own.stop()
    out = capsys.readouterr().out
    assert "cars online            2 / 2" in out
    assert "enforced on 2 cars" in out
    assert "remote lock" not in out
    assert sorted(p.name for p in state_dir.glob("*.db")) == [
        "PKFLT000000000000.db",
        "PKFLT000000000001.db",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vehicles", "2", "--keyserver", "http://127.0.0.1:9", "--restart"], "own keyserver"),
        (["--vehicles", "2", "--keyserver", "http://127.0.0.1:9"], "needs --root-key"),
        (["--vehicles", "2", "--restart-redis"], "needs --store redis"),
        (["--vehicles", "2", "--processes", "3"], "more processes than cars"),
        (
            ["--vehicles", "2", "--store", "redis", "--keyserver", "http://127.0.0.1:9"],
            "own keyserver",
        ),
    ],
)
def test_impossible_runs_say_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", *argv]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--vehicles", "0"],
        ["--vehicles", "many"],
        ["--vehicles", "2", "--first-jitter", "-1"],
        ["--vehicles", "2", "--root-key", "not-a-key"],
        ["--vehicles", "2", "--processes", "0"],
        ["--vehicles", "2", "--processes", "17"],
        ["--vehicles", "2", "--store", "sqlite"],
        ["--vehicles", "2", "--within", "0"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fleet", *argv])
    assert exit_.value.code == 2


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def test_cars_over_two_processes_come_back_after_a_restart_and_every_worker_stops() -> None:
    report = run_fleet(FleetSettings(vehicles=20, processes=2, restart=True))
    assert report.online == 20
    assert report.revocations_enforced == report.commands_executed == 20
    assert report.commands_doubled == 0
    assert len(report.worker_pids) == 2
    assert all(_gone(pid) for pid in report.worker_pids)
    restart = report.restart
    assert restart is not None
    assert restart.spread.reconnected == 20
    assert restart.spread.all_back_s is not None
    assert restart.down_to_listen_s > 0
    # every car's answers were seen: at least one upgrade each, no errors after it listened
    assert restart.answers.upgrades >= 20
    assert restart.answers.errors == 0
    assert len(restart.slowest) == 10
    assert all(car.back_s is not None and car.attempts >= 1 for car in restart.slowest)
    assert {p.name for p in restart.cpu} == {"worker 0", "worker 1", "keyserver"}


def test_a_redis_restart_under_the_cars_brings_every_car_to_the_ledgers_list(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["fleet", "--vehicles", "6", "--processes", "2", "--no-command"]
    assert main([*argv, "--store", "redis", "--restart-redis", "--within", "120"]) == 0
    out = capsys.readouterr().out
    assert "redis restart" in out
    assert "every car current    " in out
    assert "6 / 6" in out
    assert "6 hold the ledger's sequence, 6 deny the key, 6 online" in out
    assert "cpu redis" in out


@pytest.mark.slow
def test_three_hundred_cars_over_two_processes_through_both_restarts() -> None:
    settings = FleetSettings(
        vehicles=300, processes=2, restart=True, store="redis", restart_redis=True
    )
    report = run_fleet(settings)
    with_restart = report.restart
    assert with_restart is not None
    assert with_restart.spread.reconnected == 300
    assert with_restart.answers.errors == 0
    redis = report.redis_restart
    assert redis is not None
    assert redis.current == redis.matching_ledger == redis.enforced == 300
    assert redis.store_ops.samples > 0
