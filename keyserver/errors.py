"""Errors raised by the keyserver.

KeyserverError            base
└── KeyRingError          the on-disk issuer key ring is missing, unreadable or inconsistent
"""

from __future__ import annotations


class KeyserverError(Exception):
    """Base of keyserver errors; the message is one line meant for an operator."""


class KeyRingError(KeyserverError):
    pass


class StoreError(KeyserverError):
    pass


class Conflict(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The backend failed. ``may_have_succeeded`` is True when a write was sent but not answered."""

    def __init__(self, message: str, *, may_have_succeeded: bool) -> None:
        super().__init__(message)
        self.may_have_succeeded = may_have_succeeded
