"""`phonekey bench issue`: a brief real run gives a complete report and leaves no process behind.

The report's shape and consistency are checked, never its speed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lab import cli
from lab.bench import issue as bench_issue

FIGURES = ("rps", "p50_ms", "p99_ms")


def children() -> set[int]:
    """Processes whose parent is this one (a zombie, not yet waited for, counts too)."""
    mine = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == mine:
            found.add(int(entry.name))
    return found


def test_a_brief_run_reports_every_figure_and_stops_every_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = children()
    code = cli.main(["bench", "issue", "--json", "--seconds", "1", "--concurrency", "4"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert children() <= before  # redis-server, keyserver, reference servers, generator: gone

    for prefix in ("", "ceiling_", "bare_"):
        for figure in FIGURES:
            assert report[prefix + figure] > 0, prefix + figure
        assert report[prefix + "p99_ms"] >= report[prefix + "p50_ms"]
    assert report["errors"] == 0
    assert report["ceiling_errors"] == 0
    assert report["bare_errors"] == 0
    assert report["failures"] == []
    assert report["requests"] > 0
    assert report["ratio"] == pytest.approx(report["rps"] / report["ceiling_rps"], abs=1e-3)
    # CPU per request of each process while its server was under load (Linux's /proc)
    assert set(report["cpu_us"]) == {"keyserver", "ceiling", "bare"}
    assert set(report["cpu_us"]["keyserver"]) == {"loadgen", "keyserver", "redis"}
    assert set(report["cpu_us"]["ceiling"]) == {"loadgen", "ceiling"}
    assert report["cpu_us"]["keyserver"]["keyserver"] > 0
    assert report["cpu_us"]["keyserver"]["loadgen"] > 0

    settings = report["settings"]
    assert settings["seconds"] == 1
    assert settings["concurrency"] == 4
    assert settings["store"] == "redis"
    assert settings["keyserver_processes"] == 1
    assert settings["keyserver_log_level"] == "info"
    # every refresh was logged by the keyserver, warm-up and set-up included
    assert settings["keyserver_requests_logged"] >= report["requests"] + settings["warmup_requests"]


def test_the_readable_report_names_each_server_and_the_ratio(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    canned = bench_issue.IssueBench(
        rps=1800.0, p50_ms=15.0, p99_ms=30.0, requests=18_000, errors=0,
        ceiling_rps=3000.0, ceiling_p50_ms=10.0, ceiling_p99_ms=20.0, ceiling_errors=0,
        bare_rps=9000.0, bare_p50_ms=3.0, bare_p99_ms=6.0, bare_errors=0,
        ratio=0.6, failures=[],
        settings={"seconds": 10.0, "concurrency": 32, "store": "redis", "cpus": 2,
                  "keyserver_log_level": "info", "keyserver_requests_logged": 18_500},
        cpu_us={"keyserver": {"loadgen": 400.0, "keyserver": 900.0, "redis": 50.0}},
    )  # fmt: skip
    monkeypatch.setattr(bench_issue, "bench_issue", lambda **_: canned)
    assert cli.main(["bench", "issue"]) == 0
    text = capsys.readouterr().out
    assert "keyserver refresh" in text
    assert "ceiling (verify+sign)" in text
    assert "bare aiohttp" in text
    assert "ratio (rps / ceiling_rps)  0.600" in text
    assert "keyserver log level info" in text
    assert "CPU µs per request, keyserver: loadgen 400 + keyserver 900 + redis 50" in text


def test_errors_fail_the_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: object) -> bench_issue.IssueBench:
        raise bench_issue.BenchError("set-up step POST /v1/accounts: 500 b'internal'")

    monkeypatch.setattr(bench_issue, "bench_issue", broken)
    assert cli.main(["bench", "issue", "--json"]) == 1
    assert "set-up step" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argument", [["--seconds", "0"], ["--seconds", "x"], ["--concurrency", "0"]]
)
def test_bad_settings_are_refused(argument: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "issue", *argument])
    assert exit_info.value.code == 2
