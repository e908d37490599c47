"""Trusted time on the car: last trusted time plus monotonic elapsed, only ever forward.

The car never believes a wall clock. Its time is anchored by verified signed timestamps — a server
time answer bound to the car's own nonce (as Roughtime does), carried over the cloud channel or by a
phone — and raised, never lowered, by the iat of every verified token. Across a reboot the monotonic
clock restarts, so the time elapsed while off is unknown: the clock keeps its last value (a lower
bound) and reports ``reset`` until a fresh nonce-bound answer arrives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from keycore import cose
from keycore.encoding import as_bytes, as_int, as_list, as_map, dumps, loads_strict
from keycore.errors import InvalidSignedTime, InvalidState, Reason
from keycore.token import MAX_TIME
from keycore.trust import TrustStore, open_signed

TYP_SIGNED_TIME = "pk.time"
MAX_SIGNED_TIME_BYTES = 512
NONCE_MIN, NONCE_MAX = 16, 64
ST_NONCE, ST_TIME = 1, 2


def sign_time(signer: cose.Signer, *, nonce: bytes, now: int) -> bytes:
    """A time answer: ``now`` signed together with the asker's nonce."""
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise ValueError("nonce must be 16 to 64 bytes")
    return cose.sign1(dumps({ST_NONCE: nonce, ST_TIME: now}), typ=TYP_SIGNED_TIME, signer=signer)


def read_signed_time(data: bytes, *, nonce: bytes, trust: TrustStore) -> int:
    """The time in a verified answer to ``nonce``; raises InvalidSignedTime.

    The signing key must be trusted, but its validity window is not checked against a clock: this
    answer is how a car whose clock is doubtful learns what time it is.
    """
    err = InvalidSignedTime
    msg, key = open_signed(
        data, typ=TYP_SIGNED_TIME, max_size=MAX_SIGNED_TIME_BYTES, error=err, lookup=trust.lookup
    )
    body = as_map(
        loads_strict(msg.payload, err, max_size=MAX_SIGNED_TIME_BYTES),
        err,
        {ST_NONCE, ST_TIME},
        {ST_NONCE, ST_TIME},
    )
    if as_bytes(body[ST_NONCE], err, NONCE_MIN, NONCE_MAX) != nonce:
        raise err(Reason.NONCE_MISMATCH)
    when = as_int(body[ST_TIME], err, 0, MAX_TIME)
    if not key.not_before <= when <= key.not_after:
        raise err(Reason.UNKNOWN_KEY, "time outside the signing key's validity")
    return when


@dataclass(frozen=True, slots=True)
class TrustedClock:
    """Trusted time = ``anchor`` + (monotonic now − ``anchor_mono``); immutable, only forward.

    ``boot_id`` names the monotonic clock's epoch (Linux: /proc/sys/kernel/random/boot_id);
    ``reset`` is true from a detected clock reset until fresh nonce-bound time arrives.
    """

    anchor: float
    anchor_mono: float
    boot_id: str
    reset: bool

    @classmethod
    def provisioned(cls, *, now: float, mono: float, boot_id: str) -> TrustedClock:
        """A clock set at provisioning from a time the installer vouches for."""
        return cls(now, mono, boot_id, reset=False)

    @classmethod
    def unknown(cls, *, mono: float, boot_id: str) -> TrustedClock:
        """A clock with no trusted time at all: the epoch, and reset until told otherwise."""
        return cls(0.0, mono, boot_id, reset=True)

    def now(self, mono: float) -> float:
        return self.anchor + max(0.0, mono - self.anchor_mono)

    def raised(self, when: float, *, mono: float, fresh: bool) -> TrustedClock:
        """The clock after learning that it is at least ``when``; ``fresh`` clears a reset."""
        current = self.now(mono)
        return replace(
            self, anchor=max(current, when), anchor_mono=mono, reset=self.reset and not fresh
        )

    def accept_signed_time(
        self, data: bytes, *, nonce: bytes, mono: float, trust: TrustStore
    ) -> TrustedClock:
        """Raise the clock with a verified answer to our own ``nonce``; clears a reset."""
        return self.raised(read_signed_time(data, nonce=nonce, trust=trust), mono=mono, fresh=True)

    def encode(self, mono: float) -> bytes:
        """Persistable form: the trusted time now, the monotonic reading and the boot id."""
        return dumps([self.now(mono), mono, self.boot_id, self.reset])

    @classmethod
    def restore(cls, data: bytes, *, mono: float, boot_id: str) -> TrustedClock:
        """Rebuild a persisted clock. A new boot (or a monotonic clock that ran backwards) is a
        clock reset: the saved time is kept as a lower bound and ``reset`` is set."""
        value = loads_strict(data, InvalidState, max_size=256)
        when, saved_mono, saved_boot, reset = as_list(value, InvalidState, 4, 4)
        if not all(_is_time(v) for v in (when, saved_mono)):
            raise InvalidState(Reason.MALFORMED, "times must be finite numbers in range")
        if type(saved_boot) is not str or type(reset) is not bool:
            raise InvalidState(Reason.MALFORMED, "bad clock state")
        if saved_boot == boot_id and mono >= saved_mono:
            return cls(float(when), float(saved_mono), boot_id, reset)
        return cls(float(when), mono, boot_id, reset=True)


def _is_time(value: object) -> bool:
    """A finite int or float within NumericDate range (so float() can never overflow)."""
    if type(value) is int:
        return 0 <= value <= MAX_TIME
    return type(value) is float and math.isfinite(value) and 0.0 <= value <= MAX_TIME
