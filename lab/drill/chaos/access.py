"""How the chaos actions and probes reach a running stack from its directory: its record
(stack.json), its event log, and the world's control API (JSON over HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.events import EventLog, read_events
from lab.stack.spec import StackState

WORLD_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 90.0  # /stop waits for in-flight commands to be final before it answers
MAX_ANSWER_BYTES = 4 << 20


class ChaosError(LabError, RuntimeError):
    """An action or probe could not do its work; the message is one line for a person."""


def state(stack_dir: str | Path) -> StackState:
    return StackState.load(Path(stack_dir))


def events_path(stack_dir: str | Path) -> Path:
    return Path(state(stack_dir).events)


def emit(stack_dir: str | Path, kind: str, **fields: Any) -> dict[str, Any]:
    with EventLog(events_path(stack_dir)) as log:
        return log.emit(kind, **fields)


def recent_events(stack_dir: str | Path, seconds: float, kind: str) -> list[dict[str, Any]]:
    """The events of ``kind`` from the last ``seconds`` (the log is still being written)."""
    since = time.time() - seconds
    return [
        event
        for event in read_events(events_path(stack_dir), live=True)
        if event["kind"] == kind and event["t"] >= since
    ]


def world_url(stack_dir: str | Path) -> str:
    worlds = [p for p in state(stack_dir).processes if p.kind == "world"]
    if not worlds or not worlds[0].control:
        raise ChaosError(f"the stack in {stack_dir} runs no world with a control API")
    url = worlds[0].control.rstrip("/")
    if not url.startswith("http://127.0.0.1:"):
        raise ChaosError(f"the world's control API is not on loopback: {url}")
    return url


def call_world(
    stack_dir: str | Path,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    timeout: float = WORLD_TIMEOUT_S,
) -> dict[str, Any]:
    """One request to the world's control API; its JSON answer (an object)."""
    url = world_url(stack_dir) + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 — http://127.0.0.1 only (checked above)
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            raw = answer.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as error:
        with error:
            detail = error.read(300).decode(errors="replace")
        raise ChaosError(f"{method} {url}: {error.code} {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ChaosError(f"{method} {url}: {error}") from None
    try:
        result = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise ChaosError(f"{method} {url}: the answer is not JSON") from None
    if not isinstance(result, dict):
        raise ChaosError(f"{method} {url}: the answer is not a JSON object")
    return result
