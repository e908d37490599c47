"""`phonekey demo`: the staging demo runs every step against a real keyserver process, reports the
figures, writes the plot, exits 0 — and exits non-zero when a step does not do what it should,
leaving no process behind either way."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ble_fallback.link import Link
from lab import cli
from lab.demo import demo
from lab.demo import script as demo_script

PNG = b"\x89PNG\r\n\x1a\n"


def children() -> set[int]:
    """Processes whose parent is this test process (a keyserver left running would be one)."""
    mine = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[1]) == os.getpid():
            mine.add(int(stat.parent.name))
    return mine


def test_the_demo_does_every_step_and_reports_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = children()  # a session's redis-server (tests/keyserver/conftest.py) may be running
    out = tmp_path / "report"
    assert cli.main(["demo", "--json", "--out", str(out), "--pace", "0"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report == json.loads((out / "report.json").read_text())

    assert report["passed"] is True
    assert report["skipped"] == []
    assert [s["number"] for s in report["steps"] if not s["ok"]] == []
    assert [s["number"] for s in report["steps"]] == [
        "1.1", "1.2", "1.3", "2.1", "2.2", "3.1", "3.2",
        "4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8", "4.9", "4.10", "5.1", "5.2",
        "6.1",
    ]  # fmt: skip
    # from afar, both unlocked through the cloud, each command executed once
    assert report["cloud_unlocks_by_phone"] == {"friend": 1, "owner": 1}
    # at the car, with the cloud dead, both unlocked over Bluetooth (the cloud never asked)
    # before the revocation reached the car
    assert report["ble_unlocks_before_courier"] == {"friend": 1, "owner": 1}
    ble = [a for a in report["attempts"] if a["path"] == "ble" and a["ok"]]
    assert all(a["reason"].startswith("unlocked over Bluetooth with your key") for a in ble)
    # offline for 5 days the owner still got in; at 8 days the phone said what to do
    days = [a for a in report["attempts"] if a["phase"] == "offline-days"]
    assert [(a["path"], a["ok"]) for a in days] == [("ble", True), ("none", False)]
    assert "connect the phone to the internet once to renew it" in days[1]["reason"]
    # the owner's phone carried the signed list; the friend was then denied, the owner was not
    assert report["courier"] == "applied"
    assert report["friend_after_courier"] == "revoked"
    assert report["unlocks"] == {"cloud": 2, "ble": 4}
    assert report["denied"] == {"not_sent": 1, "revoked": 1}
    # the cloud came back and the car's audit trail shows the outage's Bluetooth decisions
    assert report["audit"]["outage_ble"] == {"granted": 4, "revoked": 1}
    assert report["audit"]["caught_up_s"] is not None
    assert report["outage_s"] > 0
    assert report["latency_ms"]["cloud"]["n"] == 2
    assert report["latency_ms"]["ble"]["n"] == 4

    assert Path(report["plot"]).read_bytes().startswith(PNG)
    kinds = [json.loads(line)["kind"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert kinds.count("unlock") == 8
    assert kinds.count("actuation") == 6
    assert kinds.count("fault") == 4  # the car's link cut and the cloud outage, start and end
    # the live view went to stderr as plain lines (not a terminal): one per step, each ✓
    view = captured.err.splitlines()
    assert sum(line.startswith(" ✓ ") for line in view) == len(report["steps"]) - 1
    assert not any(line.startswith(" ✗ ") for line in view)
    assert any(line.strip().startswith("[cloud down · car link") for line in view)
    assert children() <= before  # the keyserver the demo started is gone


def test_a_step_that_does_not_do_what_it_should_fails_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def courier_lost(link: Link, **documents: Any) -> list[Any]:
        await link.close()  # the phone walked away before handing the list over
        return []

    monkeypatch.setattr(demo_script, "carry_over_ble", courier_lost)
    text = io.StringIO()
    before = children()

    assert demo.run(tmp_path / "report", stdout=text, live=False, pace=0) == 1

    lines = text.getvalue().splitlines()
    assert any(line.startswith(" ✓ 4.5 ") for line in lines)
    assert " ✗ 4.6  courier: the car answered no answer" in "\n".join(lines)
    assert any(line.startswith(" - 4.7 ") and line.endswith("skipped") for line in lines)
    assert lines[-1] == "FAILED at 4.6 courier: the car answered no answer"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["passed"] is False
    assert "5.2 audit trail" in report["skipped"]
    assert children() <= before  # the keyserver the demo started is gone


def test_a_bad_pace_is_refused_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--pace", "-1"])
    assert exit_info.value.code == 2
    assert "must be in [0, 10]" in capsys.readouterr().err
