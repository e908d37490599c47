"""Roles, actions and entitlements: who may do what with a car.

Entitlements travel in a token as a bit mask (bit n = ``Action(n)``); a token is honoured for an
action only if the action is both in its mask and allowed to its role, so even a mis-issued token
cannot let a guest manage keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

DAY = 86_400


class Action(IntEnum):
    UNLOCK = 0
    LOCK = 1
    START = 2
    TRUNK = 3
    CLIMATE = 4
    MANAGE_KEYS = 5

    @classmethod
    def parse(cls, name: str) -> Action:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown action {name!r}") from None


class Role(IntEnum):
    OWNER = 0
    DRIVER = 1
    GUEST = 2
    VALET = 3
    SERVICE = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}") from None


_DRIVING = frozenset({Action.UNLOCK, Action.LOCK, Action.START})

#: The most each role can ever be granted. Only an owner manages keys.
ROLE_ENTITLEMENTS: dict[Role, frozenset[Action]] = {
    Role.OWNER: frozenset(Action),
    Role.DRIVER: _DRIVING | {Action.TRUNK, Action.CLIMATE},
    Role.GUEST: _DRIVING | {Action.TRUNK, Action.CLIMATE},
    Role.VALET: _DRIVING,  # valet mode: no trunk, no cabin settings
    Role.SERVICE: _DRIVING | {Action.TRUNK},
}

#: The longest validity window issue() will sign for each role; guests are always time-limited.
ROLE_MAX_LIFETIME: dict[Role, int] = {
    Role.OWNER: 30 * DAY,
    Role.DRIVER: 30 * DAY,
    Role.GUEST: 7 * DAY,
    Role.VALET: 1 * DAY,
    Role.SERVICE: 3 * DAY,
}

ALL_ACTIONS_MASK = (1 << len(Action)) - 1


def to_mask(actions: Iterable[Action]) -> int:
    mask = 0
    for action in actions:
        mask |= 1 << action
    return mask


_MASKS: tuple[frozenset[Action], ...] = tuple(
    frozenset(a for a in Action if mask >> a & 1) for mask in range(ALL_ACTIONS_MASK + 1)
)
ROLES: tuple[Role, ...] = tuple(Role)


def from_mask(mask: int) -> frozenset[Action]:
    return _MASKS[mask]


def allows(role: Role, entitlements: frozenset[Action], action: Action) -> bool:
    return action in entitlements and action in ROLE_ENTITLEMENTS[role]
