"""The drill's CPU sampler: a thread that writes a ``cpu`` event every second with the share of
the whole machine's time that was not idle (from /proc/stat), so a report can show beside each
wait how busy the machine was — on 2 cores a surge partly measures contention, and other
people's work on the machine shows here too. Where /proc/stat is missing, nothing is written."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

from lab.events import EventLog

PROC_STAT = Path("/proc/stat")
INTERVAL_S = 1.0


def cpu_times(text: str) -> tuple[int, int] | None:
    """(idle, total) jiffies of the machine from /proc/stat's text; None if it has no cpu line."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                values = [int(v) for v in fields[1:9]]
            except ValueError:
                return None
            if len(values) < 5:
                return None
            return values[3] + values[4], sum(values)  # idle + iowait
    return None


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of time not idle between two readings; None if no time passed."""
    idle, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return None
    return min(1.0, max(0.0, 1.0 - idle / total))


def _read(path: Path) -> tuple[int, int] | None:
    try:
        return cpu_times(path.read_text())
    except OSError:
        return None


class CpuSampler:
    """``with CpuSampler(log): ...`` writes ``cpu`` events until the block ends."""

    def __init__(self, log: EventLog, *, interval_s: float = INTERVAL_S,
                 path: Path = PROC_STAT) -> None:  # fmt: skip
        self.log = log
        self.interval_s = interval_s
        self.path = path
        self.cores = os.cpu_count() or 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def sample_once(self, before: tuple[int, int] | None) -> tuple[int, int] | None:
        """Write one event for the time since ``before``; the reading to pass next time."""
        now = _read(self.path)
        if before is not None and now is not None:
            share = busy_share(before, now)
            if share is not None:
                self.log.emit("cpu", busy=round(share, 4), cores=self.cores)
        return now

    def _run(self) -> None:
        reading = _read(self.path)
        while not self._stop.wait(self.interval_s):
            reading = self.sample_once(reading)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self._thread.join(timeout=5 * self.interval_s)
