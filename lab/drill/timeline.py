"""A drill's timeline: per-second series computed from the event log (valid-unlock success, the
wait at the car per path, remote commands' latency beside the machine's CPU use, breaker state per
source) and a PNG of them with the fault windows shaded.

Second ``k`` of a series covers [origin + k, origin + k + 1). The series are pure functions of the
events; ``plot`` draws them with matplotlib's Agg backend (no screen needed).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.drill.report import fault_windows, measured_window
from lab.events import Event, of_kind
from lab.stats import percentile

BREAKER_LEVEL = {"closed": 0.0, "disabled": 0.0, "half_open": 0.5, "open": 1.0, "forced_open": 1.0}
PATHS = ("cloud", "ble")
LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": "small"}
MAX_SECONDS = 24 * 3600  # a series longer than a day is a wrong origin, not a drill


@dataclass(frozen=True)
class Timeline:
    origin: float  # unix seconds of second 0
    seconds: int
    success: list[float | None]  # valid-unlock success fraction per second; None: no attempt
    latency_ms: dict[str, tuple[list[float | None], list[float | None]]]  # path -> (p50, p99)
    remote_ms: tuple[list[float | None], list[float | None]]  # executed remote commands
    cpu: list[float | None]  # the machine's busy %, per second
    breakers: dict[str, list[float]]  # source -> 0 closed, 0.5 half-open, 1 open (worst of it)
    faults: list[tuple[str, float, float]]  # (name, start, end) in seconds from the origin


def _bin(t: float, origin: float, seconds: int) -> int | None:
    k = math.floor(t - origin)
    return k if 0 <= k < seconds else None


def unlock_success(events: Iterable[Event], origin: float, seconds: int) -> list[float | None]:
    """Per second: the fraction of valid-key unlock attempts that unlocked."""
    attempts, ok = [0] * seconds, [0] * seconds
    for event in of_kind(events, "unlock"):
        k = _bin(float(event["t"]), origin, seconds)
        if k is None or event.get("key") != "valid":
            continue
        attempts[k] += 1
        ok[k] += bool(event.get("ok"))
    return [o / a if a else None for o, a in zip(ok, attempts, strict=True)]


def unlock_latency(
    events: Iterable[Event], origin: float, seconds: int, path: str
) -> tuple[list[float | None], list[float | None]]:
    """Per second: p50 and p99 (nearest rank) in ms of the valid-key unlocks over ``path``."""
    samples: list[list[float]] = [[] for _ in range(seconds)]
    for event in of_kind(events, "unlock"):
        k = _bin(float(event["t"]), origin, seconds)
        if k is not None and event.get("key") == "valid" and event.get("path") == path:
            samples[k].append(float(event["latency_s"]) * 1000.0)
    p50 = [percentile(s, 0.50) if s else None for s in samples]
    p99 = [percentile(s, 0.99) if s else None for s in samples]
    return p50, p99


def remote_latency(
    events: Iterable[Event], origin: float, seconds: int
) -> tuple[list[float | None], list[float | None]]:
    """Per second: p50 and p99 in ms of the remote commands that executed (``command`` events)."""
    samples: list[list[float]] = [[] for _ in range(seconds)]
    for event in of_kind(events, "command"):
        k = _bin(float(event["t"]), origin, seconds)
        if k is not None and event.get("status") == "executed":
            samples[k].append(float(event["latency_s"]) * 1000.0)
    p50 = [percentile(s, 0.50) if s else None for s in samples]
    p99 = [percentile(s, 0.99) if s else None for s in samples]
    return p50, p99


def cpu_busy(events: Iterable[Event], origin: float, seconds: int) -> list[float | None]:
    """Per second: the machine's busy share in percent (``cpu`` events), None without a sample."""
    busy: list[float | None] = [None] * seconds
    for event in of_kind(events, "cpu"):
        k = _bin(float(event["t"]), origin, seconds)
        if k is not None:
            busy[k] = max(busy[k] or 0.0, float(event["busy"]) * 100.0)
    return busy


def breaker_states(events: Iterable[Event], origin: float, seconds: int) -> dict[str, list[float]]:
    """Per source and second: the worst state any of its breakers was in during that second
    (a breaker is closed until its first event)."""
    changes: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for event in sorted(of_kind(events, "breaker"), key=lambda e: float(e["t"])):
        level = BREAKER_LEVEL.get(str(event.get("state")), 1.0)  # unknown state: assume the worst
        changes[(str(event["source"]), str(event["name"]))].append((float(event["t"]), level))
    by_source: dict[str, list[float]] = {}
    for (source, _name), steps in changes.items():
        levels = _step_maxima(steps, origin, seconds)
        held = by_source.setdefault(source, [0.0] * seconds)
        by_source[source] = [max(a, b) for a, b in zip(held, levels, strict=True)]
    return dict(sorted(by_source.items()))


def breaker_steps(
    events: Iterable[Event], origin: float, seconds: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Per source: the exact step function (seconds from ``origin``, level) of its worst
    breaker, from 0 to ``seconds`` — for drawing; ``breaker_states`` bins it per second."""
    levels: dict[tuple[str, str], float] = {}
    steps: dict[str, tuple[list[float], list[float]]] = {}
    for event in sorted(of_kind(events, "breaker"), key=lambda e: float(e["t"])):
        source = str(event["source"])
        levels[(source, str(event["name"]))] = BREAKER_LEVEL.get(str(event.get("state")), 1.0)
        worst = max(v for (s, _), v in levels.items() if s == source)
        xs, ys = steps.setdefault(source, ([0.0], [0.0]))
        x = min(max(0.0, float(event["t"]) - origin), float(seconds))
        if x == 0.0:
            ys[0] = worst  # the state held when the series begins
        else:
            xs.append(x)
            ys.append(worst)
    for xs, ys in steps.values():
        xs.append(float(seconds))
        ys.append(ys[-1])
    return dict(sorted(steps.items()))


def _step_maxima(steps: Sequence[tuple[float, float]], origin: float, seconds: int) -> list[float]:
    maxima = [0.0] * seconds
    level, i = 0.0, 0
    for k in range(seconds):
        while i < len(steps) and steps[i][0] <= origin + k:  # the state as second k begins
            level, i = steps[i][1], i + 1
        highest = level
        while i < len(steps) and steps[i][0] < origin + k + 1:
            level, i = steps[i][1], i + 1
            highest = max(highest, level)
        maxima[k] = highest
    return maxima


def timeline(events: Sequence[Event]) -> Timeline:
    """The series over the measured window (``lab.drill.report.measured_window``)."""
    origin, end = measured_window(events)
    seconds = min(MAX_SECONDS, max(1, math.ceil(end - origin)))
    faults = [
        (w.name, w.start - origin, (w.end if w.end is not None else end) - origin)
        for w in fault_windows(events)
    ]
    return Timeline(
        origin=origin,
        seconds=seconds,
        success=unlock_success(events, origin, seconds),
        latency_ms={path: unlock_latency(events, origin, seconds, path) for path in PATHS},
        remote_ms=remote_latency(events, origin, seconds),
        cpu=cpu_busy(events, origin, seconds),
        breakers=breaker_states(events, origin, seconds),
        faults=faults,
    )


def save_png(figure: Any, path: Path, title: str) -> Path:
    """Title, lay out and write a matplotlib figure as a PNG (the caller closes it)."""
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def plot(events: Sequence[Event], path: Path, title: str) -> Path:
    """Write the four-panel PNG (unlock success, the wait at the car per path, remote commands
    and CPU, breaker state) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    line = timeline(events)
    xs = [k + 0.5 for k in range(line.seconds)]
    figure, (top, middle, remote, bottom) = pyplot.subplots(4, 1, figsize=(12, 11), sharex=True)
    try:
        top.plot(xs, [math.nan if v is None else 100.0 * v for v in line.success], "o-", ms=3)
        top.set_ylim(-5, 105)
        top.set_ylabel("valid unlocks OK, %")
        for path_name, color in zip(PATHS, ("tab:blue", "tab:orange"), strict=True):
            p50, p99 = line.latency_ms[path_name]
            middle.plot(xs, _nan(p50), ".-", color=color, ms=4, label=f"{path_name} p50")
            middle.plot(xs, _nan(p99), "x--", color=color, ms=4, label=f"{path_name} p99")
        if any(v is not None for pair in line.latency_ms.values() for v in pair[1]):
            middle.set_yscale("log")
            middle.legend(**LEGEND)
        middle.axhline(1000.0, color="tab:red", linestyle=":", linewidth=1)  # the 1 s bar
        middle.set_ylabel("wait at the car, ms")
        p50, p99 = line.remote_ms
        remote.plot(xs, _nan(p50), ".-", color="tab:green", ms=4, label="remote p50")
        remote.plot(xs, _nan(p99), "x--", color="tab:green", ms=4, label="remote p99")
        if any(v is not None for v in p99):
            remote.set_yscale("log")
        remote.set_ylabel("remote command, ms")
        cpu = remote.twinx()
        cpu.plot(xs, _nan(line.cpu), "-", color="grey", linewidth=1, label="CPU %")
        cpu.set_ylim(0, 105)
        cpu.set_ylabel("machine CPU, %")
        handles = remote.get_legend_handles_labels()
        extra = cpu.get_legend_handles_labels()
        beside = {**LEGEND, "bbox_to_anchor": (1.07, 1.0)}  # clear of the CPU axis' labels
        remote.legend(handles[0] + extra[0], handles[1] + extra[1], **beside)
        steps = breaker_steps(events, line.origin, line.seconds)
        for i, (source, (xs, ys)) in enumerate(steps.items()):
            lift = 0.025 * i  # sources in the same state stay apart
            bottom.step(xs, [lift + y for y in ys], where="post", label=source)
        if steps:
            bottom.legend(**LEGEND)
        else:
            bottom.text(0.5, 0.5, "no breaker reported", transform=bottom.transAxes,
                        ha="center", color="grey")  # fmt: skip
        bottom.set_yticks([0.0, 0.5, 1.0], ["closed", "half-open", "open"])
        bottom.set_ylim(-0.1, 1.25)
        bottom.set_ylabel("breaker state")
        bottom.set_xlabel("seconds since the baseline began")
        bottom.set_xlim(0, line.seconds)
        for axes in (top, middle, remote, bottom):
            axes.grid(True, alpha=0.3)
            for _name, start, end in line.faults:
                axes.axvspan(start, end, color="tab:red", alpha=0.15)
        for moment in _world_marks(events, line.origin, line.seconds):
            top.axvline(moment, color="grey", linestyle=":", linewidth=1)
        for name, start, _end in line.faults:
            top.annotate(name, (start + 0.2, 5), fontsize="small", color="tab:red")
        return save_png(figure, path, title)
    finally:
        pyplot.close(figure)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _world_marks(events: Iterable[Event], origin: float, seconds: int) -> list[float]:
    """What the world did on request during the window (a surge, a clock jump, an agent killed),
    as seconds from the origin: drawn as dotted lines."""
    return [
        float(e["t"]) - origin
        for e in of_kind(events, "mark")
        if str(e.get("text", "")).startswith("world: ")
        and not str(e.get("text")).startswith("world: warm")
        and 0 <= float(e["t"]) - origin <= seconds
    ]
