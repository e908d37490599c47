"""The demo's plot: every unlock attempt at its own time, with the outage windows shaded.

The drills' timeline (``lab.drill.timeline``) bins events per second, which suits minutes of steady
traffic; the demo makes a handful of unlocks in a few seconds, so each one is drawn on its own:
top, who tried, by which path, and whether the car moved (a red cross when it refused, with the
reason); bottom, each unlock's latency by path. The ``fault`` windows (the car's link cut, the
cloud down) are shaded and the demo's steps are ticked along the time axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lab.drill.report import fault_windows
from lab.drill.timeline import save_png
from lab.events import Event, of_kind

LANES = {"owner": 1.0, "friend": 0.0}
PATH_STYLE = {"cloud": ("tab:blue", "o"), "ble": ("tab:orange", "s"), "none": ("tab:gray", "^")}
FAULT_COLOR = {"cloud-outage": "tab:red", "car-link-cut": "tab:gray"}


def plot(events: Sequence[Event], path: Path, title: str) -> Path:
    """Write the two-panel PNG to ``path``; the time axis is seconds since the first event."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    origin = min((float(e["t"]) for e in events), default=0.0)
    end = max((float(e["t"]) for e in events), default=1.0) - origin
    unlocks = of_kind(events, "unlock")
    figure, (top, bottom) = pyplot.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]}
    )
    try:
        for path_name, (color, marker) in PATH_STYLE.items():
            mine = [e for e in unlocks if e.get("path") == path_name]
            moved = [e for e in mine if e.get("ok")]
            refused = [e for e in mine if not e.get("ok")]
            if moved:
                top.scatter(
                    [float(e["t"]) - origin for e in moved],
                    [LANES.get(str(e["phone"]), 0.5) for e in moved],
                    color=color, marker=marker, s=80, label=f"{path_name}: unlocked", zorder=3,
                )  # fmt: skip
            if refused:
                top.scatter(
                    [float(e["t"]) - origin for e in refused],
                    [LANES.get(str(e["phone"]), 0.5) for e in refused],
                    color="tab:red", marker="x", s=90, label=f"{path_name}: refused", zorder=3,
                )  # fmt: skip
            for event in refused:
                x, y = float(event["t"]) - origin, LANES.get(str(event["phone"]), 0.5)
                top.annotate(str(event["reason"]), (x, y), (6, -14), textcoords="offset points",
                             fontsize="small", color="tab:red")  # fmt: skip
            if moved:
                times = [float(e["t"]) - origin for e in moved]
                latency = [float(e["latency_s"]) * 1000.0 for e in moved]
                bottom.plot(times, latency, marker=marker, color=color, label=path_name)
        top.set_yticks(list(LANES.values()), list(LANES))
        top.set_ylim(-0.6, 1.6)
        top.set_ylabel("unlock attempts")
        top.legend(loc="upper right", fontsize="small", ncol=2)
        bottom.set_ylabel("unlock latency, ms")
        bottom.set_ylim(bottom=0)
        bottom.legend(loc="upper right", fontsize="small")
        bottom.set_xlabel("seconds since the demo began")
        bottom.set_xlim(0, max(end, 1.0) * 1.02)
        shaded: list[str] = []
        for window in fault_windows(events):
            color = FAULT_COLOR.get(window.name, "tab:purple")
            stop = (window.end if window.end is not None else origin + end) - origin
            for axes in (top, bottom):
                axes.axvspan(window.start - origin, stop, color=color, alpha=0.12)
            top.annotate(window.name, (window.start - origin, -0.5 + 0.12 * len(shaded)),
                         fontsize="small", color=color)  # fmt: skip
            shaded.append(window.name)
        _tick_steps(bottom, events, origin)
        for axes in (top, bottom):
            axes.grid(True, alpha=0.3)
        return save_png(figure, path, title)
    finally:
        pyplot.close(figure)


def _tick_steps(axes: object, events: Sequence[Event], origin: float) -> None:
    """The step numbers (from the ``mark`` events "N.M title: ok") along the time axis."""
    from matplotlib.axes import Axes

    assert isinstance(axes, Axes)
    for event in of_kind(events, "mark"):
        number = str(event["text"]).split(" ", 1)[0]
        x = float(event["t"]) - origin
        axes.axvline(x, color="black", alpha=0.08, lw=0.8)
        axes.annotate(number, (x, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                      fontsize="x-small", va="top", ha="right", alpha=0.6)  # fmt: skip
