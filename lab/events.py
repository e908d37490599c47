"""The staging stack's event log: JSON lines that the world, the drills and the demo append to and
the drill reports are computed from (one file per stack; several processes append to it).

Every line is one event ``{"t": <unix seconds>, "kind": <kind>, ...}``; the kinds and their
fields are listed in ``KINDS``. A line is written with one ``write()`` on a file opened with
O_APPEND, so lines from different processes never interleave.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lab.errors import LabError

# one event as the readers see it (``read_events`` yields dicts; reports take any mapping)
Event = Mapping[str, Any]

# kind -> the fields every event of that kind carries (besides "t" and "kind"); events may carry
# more: a valid-key ``unlock`` (one person's intent at the car) also has ``presses`` (1 or 2) and
# ``first`` (the first press's status, path and command id), a failed one ``detail``; the
# ``mark`` of an agent killed or restarted has ``vin`` and ``agent`` ("killed" / "restarted").
# ``cpu``: the share of the machine's time not idle over the last second, and its cores.
KINDS: Mapping[str, frozenset[str]] = {
    "unlock": frozenset({"phone", "vin", "key", "path", "ok", "latency_s", "reason"}),
    "command": frozenset(
        {"phone", "vin", "action", "command_id", "path", "status", "accepted", "latency_s"}
    ),
    "http": frozenset({"window_s", "counts"}),
    "revocation": frozenset({"vin", "key_id", "status", "accepted"}),
    "actuation": frozenset({"vin", "command_id", "action", "path"}),
    "breaker": frozenset({"source", "name", "state"}),
    "fault": frozenset({"name", "phase"}),
    "reconcile": frozenset({"cars", "commands"}),
    "mark": frozenset({"text"}),
    "cpu": frozenset({"busy", "cores"}),
}
MAX_LINE = 4096  # bytes; O_APPEND writes this small are not interleaved on Linux
# the values some fields take (the report and the timeline read these)
UNLOCK_KEYS = frozenset({"valid", "revoked", "expired", "foreign", "replayed"})
PATHS = frozenset({"cloud", "ble", "none"})
BREAKER_STATES = frozenset({"closed", "open", "half_open", "forced_open", "disabled"})
FAULT_PHASES = frozenset({"start", "end"})


class EventError(LabError, ValueError):
    """An event that does not follow the schema, or a damaged line in the log."""


def check(event: Mapping[str, Any]) -> None:
    kind = event.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise EventError(f"unknown event kind {kind!r}")
    t = event.get("t")
    if not isinstance(t, int | float) or isinstance(t, bool):
        raise EventError(f"{kind} event without a time")
    missing = KINDS[kind] - event.keys()
    if missing:
        raise EventError(f"{kind} event misses {', '.join(sorted(missing))}")


class EventLog:
    """Appends events to one file; safe to share the file between processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, kind: str, *, t: float | None = None, **fields: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"t": time.time() if t is None else t, "kind": kind, **fields}
        check(event)
        line = (json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n").encode()
        if len(line) > MAX_LINE and kind != "reconcile":
            raise EventError(f"{kind} event of {len(line)} bytes is over {MAX_LINE}")
        os.write(self._fd, line)
        return event

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: Path, *, live: bool = False) -> Iterator[dict[str, Any]]:
    """Every event in the file, in the order written; a damaged line is an EventError.

    With ``live`` the file is still being appended to: a last line without its newline is a
    write in progress and is left out instead of being reported as damaged.
    """
    with Path(path).open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if live and not raw.endswith(b"\n"):
                return
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise EventError(f"{path}:{number}: not a JSON line") from exc
            if not isinstance(event, dict):
                raise EventError(f"{path}:{number}: not an object")
            try:
                check(event)
            except EventError as exc:
                raise EventError(f"{path}:{number}: {exc}") from exc
            yield event


def of_kind(events: Iterable[Event], kind: str) -> list[Event]:
    """The events of one kind, in their order."""
    return [event for event in events if event.get("kind") == kind]
