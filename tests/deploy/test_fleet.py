"""`phonekey fleet`: a thousand simulated cars against one keyserver process on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.fleet_run import FleetSettings, OwnKeyserver, run_fleet, spread
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode

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
    assert restart.reconnected == FLEET
    assert restart.peak_share <= 0.5
    assert restart.last_s > restart.first_s


def test_spread_counts_the_busiest_window() -> None:
    burst = spread([1.0] * 100, fleet_size=100)
    assert (burst.peak_per_bucket, burst.peak_share, burst.peak_per_s) == (100, 1.0, 1000.0)
    even = spread([(i + 0.5) / 100 for i in range(100)], fleet_size=100)  # 10 per window
    assert (even.peak_per_bucket, even.peak_share) == (10, 0.1)
    assert (even.first_s, even.last_s, even.reconnected) == (0.005, 0.995, 100)
    assert spread([], fleet_size=10).reconnected == 0


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
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fleet", *argv])
    assert exit_.value.code == 2
