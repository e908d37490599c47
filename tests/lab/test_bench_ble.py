"""`phonekey bench ble`: the report's shape and the round-trip budget (never its speed)."""

from __future__ import annotations

import json

import pytest

from lab import cli


def test_bench_ble_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "ble", "--json", "--iterations", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    for field in ("unlock_ms_median", "unlock_ms_p99", "decision_ms_median", "decision_ms_p99"):
        assert report[field] > 0
    assert report["unlock_ms_p99"] >= report["unlock_ms_median"]
    assert report["ratio"] == pytest.approx(
        report["unlock_ms_median"] / report["decision_ms_median"], rel=1e-2
    )
    overhead = report["unlock_ms_median"] - report["decision_ms_median"]
    assert report["overhead_ms_median"] == pytest.approx(overhead, abs=1e-3)
    assert report["overhead_ratio"] == pytest.approx(report["ratio"] - 1, abs=1e-2)
    assert report["iterations"] == 20
    assert 1 <= report["round_trips"] <= 2
    # challenge, a two-chunk request and the result at MTU 185; headers included
    assert report["chunks"] == 4
    assert 0 < report["bytes_on_air"] < 4 * 182


def test_bench_ble_prints_a_human_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "ble", "--iterations", "5"]) == 0
    out = capsys.readouterr().out
    assert "ratio (medians)" in out
    assert "× the decision" in out
    assert "round trips 2" in out
