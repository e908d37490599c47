"""What a shared key grants, between JSON and the store: role, actions, window, weekly schedule.

A share request (``parse_grant``) is checked against keycore's role policy before anything is
stored: entitlements within the role (so never ``manage_keys``), a non-empty window that ends in
the future, and a guest grant that ends at most 30 days after it starts. ``key_view`` is the one
JSON shape of a key record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keycore import ROLE_ENTITLEMENTS, Action, InvalidToken, Role, WeeklySchedule, Window
from keycore.encoding import dumps, loads_strict
from keycore.roles import from_mask, to_mask
from keycore.schedule import MAX_WINDOWS, MINUTES_PER_DAY
from keycore.token import MAX_TIME
from keyserver.fields import invalid
from keyserver.http import ApiError
from keyserver.models import KeyRecord

DAY = 86_400
OPEN_END = MAX_TIME  # a key's not_after when it runs until revoked; shown as null
MAX_GUEST_WINDOW_S = 30 * DAY
SHARED_ROLES = (Role.DRIVER, Role.GUEST, Role.VALET, Role.SERVICE)  # owners come from pairing
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # bit 0 … bit 6, as keycore
ACTION_NAMES = tuple(a.name.lower() for a in Action)
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")
MAX_SCHEDULE_BYTES = 512


@dataclass(frozen=True, slots=True)
class Grant:
    """What a key lets its holder do: validated, in the store's encoding."""

    role: Role
    entitlements: int  # action bit mask
    not_before: int
    not_after: int
    schedule: bytes | None  # CBOR of WeeklySchedule.encode()


def parse_grant(body: Mapping[str, Any], *, now: int) -> Grant:
    """The grant in a share request (fields already limited to the known ones); 400 otherwise."""
    if "role" not in body:
        raise ApiError(400, "missing_field", "field 'role' is required")
    name = body["role"]
    if not isinstance(name, str) or name not in {r.name.lower() for r in SHARED_ROLES}:
        raise invalid("role", "one of " + ", ".join(r.name.lower() for r in SHARED_ROLES))
    role = Role.parse(name)
    entitlements = _entitlements(body.get("entitlements"), role)
    not_before = _time(body, "not_before", default=now)
    if role is Role.GUEST and body.get("not_after") is None:
        raise invalid("not_after", "set for a guest: guest keys are always time-limited")
    not_after = _time(body, "not_after", default=OPEN_END)
    if not not_before < not_after:
        raise invalid("not_after", "later than not_before")
    if not_after <= now:
        raise invalid("not_after", "in the future")
    if role is Role.GUEST and not_after - not_before > MAX_GUEST_WINDOW_S:
        raise invalid("not_after", f"at most {MAX_GUEST_WINDOW_S} s after not_before for a guest")
    raw_schedule = body.get("schedule")
    schedule = None if raw_schedule is None else dumps(parse_schedule(raw_schedule).encode())
    return Grant(role, to_mask(entitlements), not_before, not_after, schedule)


def _entitlements(value: object, role: Role) -> frozenset[Action]:
    allowed = ROLE_ENTITLEMENTS[role]
    if value is None:
        return allowed
    names = ", ".join(a.name.lower() for a in sorted(allowed))
    expected = f"a non-empty list without repeats of: {names}"
    if not isinstance(value, list) or not value or len(value) > len(Action):
        raise invalid("entitlements", expected)
    if not all(isinstance(v, str) and v in ACTION_NAMES for v in value):
        raise invalid("entitlements", expected)
    actions = frozenset(Action.parse(v) for v in value)
    if len(actions) != len(value):
        raise invalid("entitlements", expected)
    if not actions <= allowed:
        extra = ", ".join(sorted(a.name.lower() for a in actions - allowed))
        raise ApiError(
            400, "entitlement_not_allowed", f"a {role.name.lower()} cannot be granted {extra}"
        )
    return actions


def _time(body: Mapping[str, Any], name: str, *, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or not 0 <= value <= MAX_TIME:
        raise invalid(name, f"a Unix time in seconds, 0…{MAX_TIME}")
    return value


def parse_schedule(value: object) -> WeeklySchedule:
    """``{utc_offset, windows: [{days, start, end}]}`` (minutes east of UTC, "HH:MM")."""
    expected = (
        "an object {utc_offset: minutes -840…840, windows: 1…16 of "
        '{days: ["mon"…"sun"], start: "HH:MM", end: "HH:MM" later than start, up to "24:00"}}'
    )
    if not isinstance(value, dict) or set(value) != {"utc_offset", "windows"}:
        raise invalid("schedule", expected)
    offset, windows = value["utc_offset"], value["windows"]
    if type(offset) is not int or not -840 <= offset <= 840:
        raise invalid("schedule", expected)
    if not isinstance(windows, list) or not 1 <= len(windows) <= MAX_WINDOWS:
        raise invalid("schedule", expected)
    parsed = []
    for window in windows:
        if not isinstance(window, dict) or set(window) != {"days", "start", "end"}:
            raise invalid("schedule", expected)
        days = window["days"]
        if not isinstance(days, list) or not days or len(days) > len(DAY_NAMES):
            raise invalid("schedule", expected)
        if not all(isinstance(d, str) and d in DAY_NAMES for d in days) or len(set(days)) != len(
            days
        ):
            raise invalid("schedule", expected)
        start, end = _minute(window["start"]), _minute(window["end"])
        if start is None or end is None or not start < end or start == MINUTES_PER_DAY:
            raise invalid("schedule", expected)
        mask = sum(1 << DAY_NAMES.index(d) for d in days)
        parsed.append(Window(mask, start, end))
    return WeeklySchedule(offset, tuple(parsed))


def _minute(value: object) -> int | None:
    if not isinstance(value, str) or not _CLOCK.fullmatch(value):
        return None
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


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
