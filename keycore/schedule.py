"""Weekly schedule windows that restrict when a (guest, valet, service) key works.

A schedule is a fixed UTC offset plus up to 16 windows, each a set of weekdays and a
``[start, end)`` range of minutes in local time. Windows crossing midnight are written as two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keycore.encoding import as_int, as_list
from keycore.errors import KeycoreError

MAX_WINDOWS = 16
MINUTES_PER_DAY = 1440
ALL_DAYS = 0b1111111  # bit 0 = Monday … bit 6 = Sunday
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday


@dataclass(frozen=True, slots=True)
class Window:
    days: int
    start: int
    end: int

    def __post_init__(self) -> None:
        if not (0 < self.days <= ALL_DAYS and 0 <= self.start < self.end <= MINUTES_PER_DAY):
            raise ValueError(f"invalid schedule window {self}")


@dataclass(frozen=True, slots=True)
class WeeklySchedule:
    utc_offset: int  # minutes east of UTC, −840 … 840
    windows: tuple[Window, ...]

    def __post_init__(self) -> None:
        if not -840 <= self.utc_offset <= 840 or not 1 <= len(self.windows) <= MAX_WINDOWS:
            raise ValueError("invalid schedule")

    def allows(self, now: float) -> bool:
        local = int(now) + self.utc_offset * 60
        day = (local // 86_400 + _EPOCH_WEEKDAY) % 7
        minute = (local % 86_400) // 60
        return any(w.days >> day & 1 and w.start <= minute < w.end for w in self.windows)

    def encode(self) -> list[Any]:
        return [self.utc_offset, [[w.days, w.start, w.end] for w in self.windows]]

    @classmethod
    def decode(cls, value: object, error: type[KeycoreError]) -> WeeklySchedule:
        offset, windows = as_list(value, error, 2, 2)
        parsed = []
        for item in as_list(windows, error, 1, MAX_WINDOWS):
            days, start, end = as_list(item, error, 3, 3)
            days = as_int(days, error, 1, ALL_DAYS)
            start = as_int(start, error, 0, MINUTES_PER_DAY - 1)
            end = as_int(end, error, start + 1, MINUTES_PER_DAY)
            parsed.append(Window(days, start, end))
        return cls(as_int(offset, error, -840, 840), tuple(parsed))
