"""The drill's CPU sampler: the machine's busy share from /proc/stat readings, written as ``cpu``
events; an unreadable or strange /proc/stat writes nothing rather than a wrong figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.drill.cpu import CpuSampler, busy_share, cpu_times
from lab.events import EventLog, read_events

STAT = "cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n"


def stat(user: int, system: int, idle: int, iowait: int = 0) -> str:
    return STAT.format(user=user, system=system, idle=idle, iowait=iowait)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (stat(100, 50, 800, 50), (850, 1000)),  # idle and iowait are both not busy
        ("cpu0 1 2 3 4 5\n", None),  # no machine line
        ("cpu  1 2 x 4 5 6 7 8\n", None),
        ("cpu  1 2 3\n", None),
        ("", None),
    ],
)
def test_cpu_times_reads_the_machine_line(text: str, expected: tuple[int, int] | None) -> None:
    assert cpu_times(text) == expected


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ((800, 1000), (850, 1200), 0.75),
        ((800, 1000), (1000, 1200), 0.0),
        ((800, 1000), (800, 1000), None),  # no time passed
        ((800, 1000), (700, 900), None),  # counters went backwards (a reboot, a bad read)
    ],
)
def test_busy_share(
    before: tuple[int, int], after: tuple[int, int], expected: float | None
) -> None:
    assert busy_share(before, after) == expected


def test_the_sampler_writes_one_event_per_reading_pair(tmp_path: Path) -> None:
    proc = tmp_path / "stat"
    proc.write_text(stat(100, 100, 800))
    with EventLog(tmp_path / "events.jsonl") as log:
        sampler = CpuSampler(log, path=proc)
        first = sampler.sample_once(None)  # the first reading writes nothing
        proc.write_text(stat(250, 150, 900))
        sampler.sample_once(first)
        proc.unlink()  # gone: nothing written, no error
        assert sampler.sample_once(first) is None
    [event] = read_events(tmp_path / "events.jsonl")
    assert event["kind"] == "cpu"
    assert event["busy"] == pytest.approx(200 / 300, abs=1e-4)
    assert event["cores"] == sampler.cores
