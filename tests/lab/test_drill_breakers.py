"""The drill's breaker scraper against stand-in keyservers' /metrics: an event per breaker when
first seen and per change after, nothing for an unchanged state or an unreachable keyserver."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lab.drill.breakers import BreakerScraper, breaker_states
from lab.events import EventLog, read_events
from lab.processes.base import free_port
from lab.stack.spec import ProcessRecord, StackState

HANG_GUARD_S = 10.0  # only against a hang; no assertion depends on it


def exposition(states: dict[str, str]) -> str:
    lines = [
        "# HELP resilience4j_circuitbreaker_state 1 for the breaker's state",
        "# TYPE resilience4j_circuitbreaker_state gauge",
    ]
    for name, current in states.items():
        for state in ("closed", "open", "half_open", "forced_open", "disabled"):
            value = 1.0 if state == current else 0.0
            lines.append(
                f'resilience4j_circuitbreaker_state{{name="{name}",state="{state}"}} {value}'
            )
    lines.append('http_requests_total{code="200"} 5.0')
    return "\n".join(lines) + "\n"


class Metrics(BaseHTTPRequestHandler):
    states: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        data = exposition(self.states).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stack_dir(tmp_path: Path) -> Iterator[Path]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Metrics.states = {"redis": "closed", "redis-primary": "closed"}
    up = ProcessRecord("keyserver-0", "keyserver", ["python"], {}, "log")
    up.metrics = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    down = ProcessRecord("keyserver-1", "keyserver", ["python"], {}, "log")
    down.metrics = f"http://127.0.0.1:{free_port()}/metrics"  # nobody listens there
    events = tmp_path / "events.jsonl"
    StackState("ha", str(tmp_path), 0.0, "", "", "", str(events), [up, down]).save()
    try:
        yield tmp_path
    finally:
        server.shutdown()
        server.server_close()


def breakers(stack_dir: Path) -> list[tuple[str, str, str]]:
    events = read_events(stack_dir / "events.jsonl")
    return [(e["source"], e["name"], e["state"]) for e in events if e["kind"] == "breaker"]


def test_states_are_read_from_the_exposition() -> None:
    text = exposition({"redis": "half_open", "cloud": "closed"})
    assert breaker_states(text) == {"redis": "half_open", "cloud": "closed"}
    assert breaker_states("") == {}


def test_an_event_when_first_seen_and_on_each_change_only(stack_dir: Path) -> None:
    with EventLog(stack_dir / "events.jsonl") as log:
        scraper = BreakerScraper(stack_dir, log)
        assert scraper.scrape_once() == 2
        assert scraper.scrape_once() == 0
        Metrics.states["redis"] = "open"
        assert scraper.scrape_once() == 1
        Metrics.states["redis"] = "half_open"
        Metrics.states["redis-primary"] = "open"
        assert scraper.scrape_once() == 2
    assert breakers(stack_dir) == [
        ("keyserver-0", "redis", "closed"),
        ("keyserver-0", "redis-primary", "closed"),
        ("keyserver-0", "redis", "open"),
        ("keyserver-0", "redis", "half_open"),
        ("keyserver-0", "redis-primary", "open"),
    ]


def test_the_thread_scrapes_until_stopped(stack_dir: Path) -> None:
    with EventLog(stack_dir / "events.jsonl") as log:
        with BreakerScraper(stack_dir, log, interval_s=0.01) as scraper:
            deadline = time.monotonic() + HANG_GUARD_S
            while scraper.scrapes < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert scraper.scrapes >= 3
        assert not scraper.running
    assert len(breakers(stack_dir)) == 2
