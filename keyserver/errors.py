"""Errors raised by the keyserver.

KeyserverError            base
└── KeyRingError          the on-disk issuer key ring is missing, unreadable or inconsistent
"""

from __future__ import annotations


class KeyserverError(Exception):
    """Base of keyserver errors; the message is one line meant for an operator."""


class KeyRingError(KeyserverError):
    pass
