"""Which part of a car's audit trail an account may read: the events the car recorded while the
account owned it (where and when a car was opened is personal data).

An event belongs to the tenure during which the car recorded it, judged by the car's own trusted
time — the ``at`` most events carry — not by when the keyserver received it: a car offline at
the sale uploads the seller's last trips afterwards, and those stay the seller's. The car's
trusted time only moves forward, so an event without a readable ``at`` lies between the timed
events around it in the car's order; it is shown only if that whole span lies inside the
reader's tenure (fail closed: near a sale, an untimed event is shown to neither side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keyserver.models import Tenure

_MAX_AT = 2**53  # seconds; larger integers are not exact as floats, and no car's time


@dataclass(frozen=True, slots=True)
class CarEvent:
    seq: int
    event: dict[str, Any]


def tenures_of(account_id: str, history: Sequence[Tenure], owner_id: str | None) -> list[Tenure]:
    """The account's tenures: those in the history, and, for a current owner the history does
    not show (owner since before it was kept), one from 0."""
    mine = [t for t in history if t.owner_id == account_id]
    if owner_id == account_id and not any(t.until is None for t in mine):
        mine.append(Tenure(account_id, 0, None))
    return mine


def within(events: Sequence[CarEvent], tenures: Sequence[Tenure]) -> list[CarEvent]:
    """The events (in the car's order) the car certainly recorded inside one of ``tenures``."""
    spans = _spans(events)
    return [
        event
        for event, (earliest, latest) in zip(events, spans, strict=True)
        if any(_inside(t, earliest, latest) for t in tenures)
    ]


def _inside(tenure: Tenure, earliest: float, latest: float) -> bool:
    return tenure.since <= earliest and (tenure.until is None or latest < tenure.until)


def _spans(events: Sequence[CarEvent]) -> list[tuple[float, float]]:
    """Each event's (earliest, latest) time by the car's clock: its own ``at``, or the ``at`` of
    the nearest timed events before and after it (0 and infinity when there is none)."""
    times = [_at(e.event) for e in events]
    earliest, latest = [0.0] * len(times), [math.inf] * len(times)
    last = 0.0
    for i, at in enumerate(times):
        last = at if at is not None else last
        earliest[i] = last
    last = math.inf
    for i in range(len(times) - 1, -1, -1):
        at = times[i]
        last = at if at is not None else last
        latest[i] = last
    return list(zip(earliest, latest, strict=True))


def _at(event: dict[str, Any]) -> float | None:
    at = event.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float):  # JSON true is no time
        return None
    if isinstance(at, int) and not 0 <= at <= _MAX_AT:  # float() of a huge int would raise
        return None
    return float(at) if math.isfinite(at) and at >= 0 else None
