"""What a shared key grants, between JSON and the store: role, actions, window, weekly schedule.

A share request's fields arrive parsed (their shapes: ``KeySchedule`` here, the rest in
keyserver.routes.sharing); ``grant_of`` checks them against keycore's role policy before
anything is stored: entitlements within the role (so never ``manage_keys``), a non-empty window
that ends in the future, and a guest grant that ends at most 30 days after it starts.
``key_view`` is the one JSON shape of a key record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from keycore import ROLE_ENTITLEMENTS, Action, InvalidToken, Role, WeeklySchedule, Window
from keycore.encoding import dumps, loads_strict
from keycore.roles import from_mask, to_mask
from keycore.schedule import MAX_WINDOWS
from keycore.token import MAX_TIME
from keyserver.bodies import Body, invalid
from keyserver.http import ApiError
from keyserver.models import KeyRecord

DAY = 86_400
OPEN_END = MAX_TIME  # a key's not_after when it runs until revoked; shown as null
MAX_GUEST_WINDOW_S = 30 * DAY
SHARED_ROLES = (Role.DRIVER, Role.GUEST, Role.VALET, Role.SERVICE)  # owners come from pairing
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # bit 0 … bit 6, as keycore
ACTION_NAMES = tuple(a.name.lower() for a in Action)
_CLOCK = "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
MAX_SCHEDULE_BYTES = 512


@dataclass(frozen=True, slots=True)
class Grant:
    """What a key lets its holder do: validated, in the store's encoding."""

    role: Role
    entitlements: int  # action bit mask
    not_before: int
    not_after: int
    schedule: bytes | None  # CBOR of WeeklySchedule.encode()


def _day(name: str) -> str:
    if name not in DAY_NAMES:
        raise ValueError("not a day")
    return name


def _no_repeats(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("repeated")
    return values


def _minute(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


Clock = Annotated[str, Field(pattern=_CLOCK, description='"HH:MM", up to "24:00"')]


class KeyScheduleWindow(Body):
    days: Annotated[
        list[Annotated[str, AfterValidator(_day), WithJsonSchema({"enum": list(DAY_NAMES)})]],
        Field(min_length=1, max_length=len(DAY_NAMES), json_schema_extra={"uniqueItems": True}),
        AfterValidator(_no_repeats),
    ]
    start: Clock
    end: Annotated[Clock, Field(description="later than start")]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not _minute(self.start) < _minute(self.end):  # so a window never starts at 24:00
            raise ValueError("a window ends after it starts")
        return self

    def window(self) -> Window:
        mask = sum(1 << DAY_NAMES.index(d) for d in self.days)
        return Window(mask, _minute(self.start), _minute(self.end))


class KeySchedule(Body):
    """When a key works: windows of the week, in the car's local time (minutes east of UTC)."""

    utc_offset: Annotated[int, Field(ge=-840, le=840)]
    windows: Annotated[list[KeyScheduleWindow], Field(min_length=1, max_length=MAX_WINDOWS)]

    def weekly(self) -> WeeklySchedule:
        return WeeklySchedule(self.utc_offset, tuple(w.window() for w in self.windows))


SCHEDULE_EXPECTED = (
    "an object {utc_offset: minutes -840…840, windows: 1…16 of "
    '{days: ["mon"…"sun"], start: "HH:MM", end: "HH:MM" later than start, up to "24:00"}}'
)


def grant_of(
    role: Role,
    entitlements: frozenset[Action] | None,
    not_before: int | None,
    not_after: int | None,
    schedule: WeeklySchedule | None,
    *,
    now: int,
) -> Grant:
    """The grant a share request asks for, checked against the role's policy; 400 otherwise.
    ``None``: the default (all the role's actions, from now, until revoked, at any time)."""
    allowed = ROLE_ENTITLEMENTS[role]
    actions = allowed if entitlements is None else entitlements
    if not actions <= allowed:
        extra = ", ".join(sorted(a.name.lower() for a in actions - allowed))
        raise ApiError(
            400, "entitlement_not_allowed", f"a {role.name.lower()} cannot be granted {extra}"
        )
    start = now if not_before is None else not_before
    if role is Role.GUEST and not_after is None:
        raise invalid("not_after", "set for a guest: guest keys are always time-limited")
    end = OPEN_END if not_after is None else not_after
    if not start < end:
        raise invalid("not_after", "later than not_before")
    if end <= now:
        raise invalid("not_after", "in the future")
    if role is Role.GUEST and end - start > MAX_GUEST_WINDOW_S:
        raise invalid("not_after", f"at most {MAX_GUEST_WINDOW_S} s after not_before for a guest")
    encoded = None if schedule is None else dumps(schedule.encode())
    return Grant(role, to_mask(actions), start, end, encoded)


def load_schedule(data: bytes | None) -> WeeklySchedule | None:
    """A stored schedule (CBOR of ``WeeklySchedule.encode()``)."""
    if data is None:
        return None
    return WeeklySchedule.decode(
        loads_strict(data, InvalidToken, max_size=MAX_SCHEDULE_BYTES), InvalidToken
    )


def schedule_view(schedule: WeeklySchedule) -> dict[str, Any]:
    return {
        "utc_offset": schedule.utc_offset,
        "windows": [
            {
                "days": [d for i, d in enumerate(DAY_NAMES) if w.days >> i & 1],
                "start": _clock(w.start),
                "end": _clock(w.end),
            }
            for w in schedule.windows
        ],
    }


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def action_names(mask: int) -> list[str]:
    return [a.name.lower() for a in sorted(from_mask(mask))]


def key_view(key: KeyRecord) -> dict[str, Any]:
    """A key record as the API shows it."""
    schedule = load_schedule(key.schedule)
    return {
        "key_id": key.key_id,
        "vin": key.vin,
        "account_id": key.account_id,
        "device_id": key.device_id,
        "role": key.role.name.lower(),
        "entitlements": action_names(key.entitlements),
        "not_before": key.not_before,
        "not_after": None if key.not_after >= OPEN_END else key.not_after,
        "schedule": None if schedule is None else schedule_view(schedule),
        "status": key.status.value,
        "created_at": key.created_at,
    }
