"""`phonekey drill`: usage errors exit 2 with a clear line; the reports, plots and summary it
writes (with the drill itself replaced by a synthetic outcome: the end-to-end runs are in
test_drills.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from lab import cli
from lab.drill import cli as drill_cli
from lab.drill.chaos import DRILLS
from lab.drill.drill import DrillOutcome, DrillSettings
from lab.drill.report import compute_report
from tests.lab.drill_events import healthy, http


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["drill", "redis-gone"], "unknown drill 'redis-gone'; drills: all, redis-down"),
        (["drill", "all", "--json", "x.json"], "--json and --plot are for one drill"),
        (["drill", "redis-down", "--out", "d"], "--out is for 'drill all'"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["0", "-1", "601", "soon"])
def test_bad_seconds_exit_2(seconds: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["drill", "redis-down", "--seconds", seconds])
    assert exited.value.code == 2


def fake_run(failing: set[str]) -> Any:
    def run_drill(name: str, directory: Path, settings: DrillSettings) -> DrillOutcome:
        assert settings.fault_s == 5.0
        events = healthy() + ([http(4, server_errors=1)] if name in failing else [])
        report = compute_report(name, events, min_fault_samples=0)  # a small synthetic log
        return DrillOutcome(report, events, {"status": "completed"})

    return run_drill


def test_one_drill_writes_its_report_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(drill_cli, "run_drill", fake_run(set()))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = [
        "drill",
        "redis-down",
        "--seconds",
        "5",
        "--json",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "r.png"),
    ]
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    assert "| redis-down | yes |" in capsys.readouterr().out


def test_all_writes_every_report_and_the_summary_and_fails_if_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(drill_cli, "run_drill", fake_run({"redis-hang"}))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the failed drill's dir is kept
    assert cli.main(["drill", "all", "--seconds", "5", "--out", str(tmp_path)]) == 1
    for name in DRILLS:
        assert json.loads((tmp_path / f"{name}.json").read_text())["drill"] == name
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("\n") == len(DRILLS) + 2
    assert "| redis-hang | **no** |" in summary
    captured = capsys.readouterr()
    assert captured.out == summary
    assert "drill redis-hang: http_5xx = 1" in captured.err
