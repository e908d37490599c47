"""The `phonekey` command: the benchmark's report (shape, not speed); the demo is in test_demo."""

from __future__ import annotations

import json

import pytest

from lab import cli


def test_bench_verify_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "verify", "--json", "--iterations", "40"]) == 0
    report = json.loads(capsys.readouterr().out)
    for field in (
        "decision_us_median",
        "decision_us_p99",
        "raw_us_median",
        "raw_us_p99",
        "cold_decision_us_median",
    ):
        assert report[field] > 0
    assert report["decision_us_p99"] >= report["decision_us_median"]
    assert report["ratio"] == pytest.approx(
        report["decision_us_median"] / report["raw_us_median"], abs=1e-3
    )
    assert report["iterations"] == 40
    assert report["revocation_entries"] == 1000
    assert report["token_bytes"] <= 256


def test_bench_rejects_bad_iterations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "verify", "--iterations", "zero"])
    assert exit_info.value.code == 2
    assert "not an integer" in capsys.readouterr().err
