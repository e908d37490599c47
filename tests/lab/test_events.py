"""The event log: the schema is enforced on write and on read, lines from several writers never
mix, a damaged line is named, and a live reader leaves out a line still being written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lab.events import KINDS, MAX_LINE, EventError, EventLog, check, read_events

FIELDS: dict[str, dict[str, Any]] = {
    "unlock": {
        "phone": "p",
        "vin": "V",
        "key": "valid",
        "path": "ble",
        "ok": True,
        "latency_s": 0.2,
        "reason": "ok",
    },
    "command": {
        "phone": "p",
        "vin": "V",
        "action": "lock",
        "command_id": "c1",
        "path": "cloud",
        "status": "executed",
        "accepted": True,
        "latency_s": 0.3,
    },
    "http": {"window_s": 1.0, "counts": {"2xx": 3, "4xx": 0, "429": 0, "5xx": 0}},
    "revocation": {"vin": "V", "key_id": "k", "status": 200, "accepted": True},
    "actuation": {"vin": "V", "command_id": None, "action": "unlock", "path": "ble"},
    "breaker": {"source": "keyserver-0", "name": "redis", "state": "open"},
    "fault": {"name": "redis-down", "phase": "start"},
    "reconcile": {"cars": {}, "commands": {}},
    "mark": {"text": "drill: baseline"},
    "cpu": {"busy": 0.42, "cores": 2},
}


def test_every_kind_has_an_example() -> None:
    assert set(FIELDS) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_round_trips(tmp_path: Path, kind: str) -> None:
    with EventLog(tmp_path / "events.jsonl") as log:
        written = log.emit(kind, t=1.5, **FIELDS[kind])
    assert list(read_events(tmp_path / "events.jsonl")) == [written]
    assert written == {"t": 1.5, "kind": kind, **FIELDS[kind]}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"t": 1.0, "kind": "nope"}, "unknown event kind 'nope'"),
        ({"t": True, "kind": "mark", "text": "x"}, "mark event without a time"),
        ({"kind": "mark", "text": "x"}, "mark event without a time"),
        ({"t": 1.0, "kind": "fault", "name": "x"}, "fault event misses phase"),
        ({"t": 1.0, "kind": "breaker"}, "breaker event misses name, source, state"),
    ],
)
def test_a_bad_event_is_refused(event: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError, match=message):
        check(event)


def test_emit_refuses_a_bad_event_and_writes_nothing(tmp_path: Path) -> None:
    with EventLog(tmp_path / "e.jsonl") as log:
        with pytest.raises(EventError):
            log.emit("fault", name="x")
        with pytest.raises(EventError, match="over 4096"):
            log.emit("mark", text="x" * MAX_LINE)
        log.emit(
            "reconcile", cars={"V": {"executed": {f"c{n}": 1 for n in range(500)}}}, commands={}
        )  # a reconcile may be long
    assert [e["kind"] for e in read_events(tmp_path / "e.jsonl")] == ["reconcile"]


def test_two_writers_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    with EventLog(path) as first, EventLog(path) as second:
        for n in range(200):
            (first if n % 2 else second).emit("mark", t=float(n), text=f"line {n} " + "x" * 900)
    texts = [e["text"] for e in read_events(path)]
    assert sorted(texts, key=lambda t: int(t.split()[1])) == [
        f"line {n} " + "x" * 900 for n in range(200)
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"t": 1, "kind": "mark", "text": "a"}\n{not json\n', r":2: not a JSON line"),
        (b"[1, 2]\n", r":1: not an object"),
        (b'{"t": 1, "kind": "fault", "name": "x"}\n', r":1: fault event misses phase"),
        (b'{"t": 1, "kind": "mark", "text": "a"}\n{"t": 2, "ki', r":2: not a JSON line"),
    ],
)
def test_a_damaged_line_is_named(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(raw)
    with pytest.raises(EventError, match=message):
        list(read_events(path))


def test_a_live_reader_leaves_out_the_line_being_written(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    whole = json.dumps({"t": 1, "kind": "mark", "text": "a"}).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, whole + b'\n{"t": 2, "kind": "ma')
        assert [e["text"] for e in read_events(path, live=True)] == ["a"]
        os.write(fd, b'rk", "text": "b"}\n')
        assert [e["text"] for e in read_events(path, live=True)] == ["a", "b"]
    finally:
        os.close(fd)
