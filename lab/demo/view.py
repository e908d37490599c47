"""The demo's live terminal view and its report.

``LiveView`` prints one line per step with ✓ or ✗, and a status line (cloud up or down, the car's
link, unlocks by path). On a terminal the status line sits under the steps and is redrawn in place
a few times a second; anywhere else (a pipe, a test, CI) it is printed as a plain line whenever it
changed at a step. ``DemoReport`` holds what happened and computes the figures of the summary.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

REFRESH_S = 0.2
OK, FAILED, SKIPPED = "✓", "✗", "-"


@dataclass(frozen=True)
class StepResult:
    number: str
    title: str
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class Attempt:
    """One unlock by a phone: which path it took, whether the car moved, and why."""

    phone: str
    phase: str  # "cloud", "outage", "after-courier"
    path: str  # "cloud", "ble", "none"
    ok: bool  # the car's actuator moved
    code: str  # the car's or the cloud's answer: executed, granted, revoked, ...
    latency_ms: float
    reason: str


@dataclass
class DemoReport:
    steps: list[StepResult] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    vin: str = ""
    keyserver: str = ""
    revocation_sequence: int | None = None
    courier: str | None = None  # the car's answer to the carried revocation list
    outage_s: float | None = None
    audit_caught_up_s: float | None = None  # cloud back → the trail holds the outage's events
    audit_outage: dict[str, int] = field(default_factory=dict)  # code -> BLE decisions in it
    plot: str | None = None
    events: str | None = None
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps) and not self.skipped

    def unlocks(self) -> dict[str, int]:
        """Unlocks that moved the car, by path."""
        moved = Counter(a.path for a in self.attempts if a.ok)
        return {"cloud": moved["cloud"], "ble": moved["ble"]}

    def denied(self) -> dict[str, int]:
        return dict(Counter(a.code for a in self.attempts if not a.ok))

    def latency_ms(self) -> dict[str, dict[str, float | int | None]]:
        figures: dict[str, dict[str, float | int | None]] = {}
        for path in ("cloud", "ble"):
            samples = [a.latency_ms for a in self.attempts if a.ok and a.path == path]
            median = round(statistics.median(samples), 1) if samples else None
            figures[path] = {"median": median, "n": len(samples)}
        return figures

    def by_phone(self, phase: str, path: str) -> dict[str, int]:
        moved = Counter(
            a.phone for a in self.attempts if a.ok and (a.phase, a.path) == (phase, path)
        )
        return dict(sorted(moved.items()))

    def to_dict(self) -> dict[str, Any]:
        after = [a for a in self.attempts if a.phase == "after-courier" and a.phone == "friend"]
        return {
            "passed": self.passed,
            "vin": self.vin,
            "keyserver": self.keyserver,
            "steps": [asdict(s) for s in self.steps],
            "skipped": self.skipped,
            "unlocks": self.unlocks(),
            "denied": self.denied(),
            "latency_ms": self.latency_ms(),
            "cloud_unlocks_by_phone": self.by_phone("cloud", "cloud"),
            "ble_unlocks_before_courier": self.by_phone("outage", "ble"),
            "friend_after_courier": after[-1].code if after else None,
            "revocation_sequence": self.revocation_sequence,
            "courier": self.courier,
            "outage_s": self.outage_s,
            "audit": {"caught_up_s": self.audit_caught_up_s, "outage_ble": self.audit_outage},
            "attempts": [asdict(a) for a in self.attempts],
            "plot": self.plot,
            "events": self.events,
            "seconds": self.seconds,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def summary(self) -> list[str]:
        passed = sum(s.ok for s in self.steps)
        total = len(self.steps) + len(self.skipped)
        latency = self.latency_ms()
        unlocks = self.unlocks()
        denied = ", ".join(f"{n} {code}" for code, n in sorted(self.denied().items())) or "none"
        lines = [
            f"  steps            {passed} / {total} passed",
            f"  unlocks          cloud {unlocks['cloud']} · ble {unlocks['ble']}"
            f" · denied: {denied}",
            "  latency median   " + " · ".join(
                f"{path} {_ms(latency[path]['median'])}" for path in ("cloud", "ble")
            ),
        ]  # fmt: skip
        if self.outage_s is not None:
            lines.append(f"  cloud outage     {self.outage_s:.1f} s")
        if self.audit_caught_up_s is not None:
            held = ", ".join(f"{n} {code}" for code, n in sorted(self.audit_outage.items()))
            lines.append(
                f"  audit caught up  {self.audit_caught_up_s:.2f} s after the cloud returned"
                f" (BLE decisions of the outage in the trail: {held})"
            )
        lines.append(f"  total            {self.seconds:.1f} s")
        return lines


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


class LiveView:
    """Step lines and a status line on ``out``; ``live`` redraws the status line in place."""

    def __init__(self, out: TextIO, status: Callable[[], str], *, live: bool) -> None:
        self.out = out
        self.status = status
        self.live = live
        self._shown = ""  # the status line on screen (live) or last printed (plain)

    def say(self, text: str) -> None:
        """A line of its own (the status line, when live, is redrawn under it)."""
        if self.live:
            self.out.write(f"\r\x1b[K{text}\n")
            self._draw()
        else:
            self.out.write(f"{text}\n")
        self.out.flush()

    def step(self, result: StepResult) -> None:
        mark = OK if result.ok else FAILED
        self.say(
            f" {mark} {result.number:4s} {result.title}: {result.detail} ({result.seconds:.2f} s)"
        )
        if not self.live:
            self.plain_status()

    def skipped(self, number: str, title: str) -> None:
        self.say(f" {SKIPPED} {number:4s} {title}: skipped")

    def plain_status(self) -> None:
        """Off a terminal: the status line as a plain line, when it changed."""
        text = self.status()
        if text != self._shown:
            self._shown = text
            self.out.write(f"      [{text}]\n")
            self.out.flush()

    async def refresh(self) -> None:
        """Redraw the status line until cancelled (only when live)."""
        while self.live:
            self._draw()
            self.out.flush()
            await asyncio.sleep(REFRESH_S)

    def close(self) -> None:
        if self.live:
            self.out.write(f"\r\x1b[K[{self.status()}]\n")
            self.out.flush()

    def _draw(self) -> None:
        self._shown = self.status()
        self.out.write(f"\r\x1b[K[{self._shown}]")
