"""Errors raised by keycore, and the reason codes they carry for audit and metrics.

    KeycoreError                  base; every instance carries a machine-readable ``reason``
    ├── InvalidToken              a key token was refused (one opaque message; reason for audit)
    ├── InvalidProof              a proof of possession or its challenge was refused
    ├── InvalidRevocationList     a signed revocation list (full or delta) was refused
    ├── InvalidTrustUpdate        a root-signed trust-store update was refused
    ├── InvalidSignedTime         a signed time answer was refused
    ├── InvalidState              persisted local state (e.g. the trusted clock) could not be read
    ├── InvalidFrame              a cloud↔car channel frame was refused (keycore.channel)
    ├── InvalidCommand            a signed remote command was refused (keycore.command)
    └── IssueError                an issuer was asked to sign something the policy forbids

Callers show users the opaque ``str(error)``; audit logs and metrics record ``error.reason``.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a document or decision was refused. Values are stable: they appear in audit logs."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNKNOWN_KEY = "unknown_key"
    ALGORITHM_MISMATCH = "algorithm_mismatch"
    BAD_SIGNATURE = "bad_signature"
    WRONG_VEHICLE = "wrong_vehicle"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    OUTSIDE_SCHEDULE = "outside_schedule"
    NOT_ENTITLED = "not_entitled"
    REVOKED = "revoked"
    # proof of possession and challenges
    BAD_PROOF = "bad_proof"
    REPLAYED = "replayed"
    CHALLENGE_EXPIRED = "challenge_expired"
    # trusted time
    UNTRUSTED_TIME = "untrusted_time"
    NONCE_MISMATCH = "nonce_mismatch"
    # sequence-numbered documents
    STALE = "stale"
    GAP = "gap"
    # issuing policy
    POLICY = "policy"


class KeycoreError(Exception):
    """Base of every keycore error. ``reason`` says why; the message stays opaque."""

    message = "refused"

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(self.message)
        self.reason = reason
        # ``detail`` is for developers and tests; never shown to the other party.
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason.value!r})"


class InvalidToken(KeycoreError):
    message = "invalid key token"


class InvalidProof(KeycoreError):
    message = "invalid proof of possession"


class InvalidRevocationList(KeycoreError):
    message = "invalid revocation list"


class InvalidTrustUpdate(KeycoreError):
    message = "invalid trust-store update"


class InvalidSignedTime(KeycoreError):
    message = "invalid signed time"


class InvalidState(KeycoreError):
    message = "unreadable local state"


class InvalidFrame(KeycoreError):
    message = "invalid channel frame"


class IssueError(KeycoreError):
    message = "cannot issue"

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.POLICY, detail)
        self.args = (f"cannot issue: {detail}",)
