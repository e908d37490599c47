"""The drill's breaker scraper: a thread that reads every keyserver's ``/metrics`` about four
times a second and writes a ``breaker`` event each time a breaker's state changes (and once for
each breaker when first seen), so the report and the plot see breakers open and close."""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from prometheus_client.parser import text_string_to_metric_families

from lab.events import EventLog
from lab.stack.spec import StackError, StackState

STATE_FAMILY = "resilience4j_circuitbreaker_state"
INTERVAL_S = 0.25
SCRAPE_TIMEOUT_S = 0.5
MAX_METRICS_BYTES = 1 << 20


def breaker_states(metrics_text: str) -> dict[str, str]:
    """Breaker name → state, from a Prometheus text exposition (the state whose gauge is 1)."""
    states: dict[str, str] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != STATE_FAMILY:
            continue
        for sample in family.samples:
            name, state = sample.labels.get("name"), sample.labels.get("state")
            if name and state and sample.value == 1.0:
                states[name] = state
    return states


def _scrape(url: str) -> dict[str, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as answer:  # noqa: S310
            text = answer.read(MAX_METRICS_BYTES).decode(errors="replace")
    except urllib.error.HTTPError as error:
        error.close()
        return None
    except (urllib.error.URLError, OSError):
        return None  # down or restarting: its breakers are unknown, not closed
    try:
        return breaker_states(text)
    except ValueError:
        return None


class BreakerScraper:
    """``with BreakerScraper(stack_dir, log): ...`` scrapes in a thread until the block ends."""

    def __init__(self, stack_dir: Path, log: EventLog, *, interval_s: float = INTERVAL_S) -> None:
        self.stack_dir = Path(stack_dir)
        self.log = log
        self.interval_s = interval_s
        self.known: dict[tuple[str, str], str] = {}
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="breaker-scraper", daemon=True)

    def _targets(self) -> list[tuple[str, str]]:
        try:
            state = StackState.load(self.stack_dir)
        except StackError:
            return []  # being rewritten by a restart: next round
        return [
            (p.name, p.metrics)
            for p in state.processes
            if p.kind == "keyserver" and p.metrics and p.metrics.startswith("http://127.0.0.1:")
        ]

    def scrape_once(self) -> int:
        """One round over every keyserver; how many events it wrote."""
        written = 0
        for source, url in self._targets():
            for name, state in sorted((_scrape(url) or {}).items()):
                if self.known.get((source, name)) != state:
                    self.known[(source, name)] = state
                    self.log.emit("breaker", source=source, name=name, state=state)
                    written += 1
        self.scrapes += 1
        return written

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scrape_once()
            self._stop.wait(self.interval_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(RuntimeError):  # never started
            self._thread.join(timeout=10 * SCRAPE_TIMEOUT_S + self.interval_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
