"""The claims of the test tokens, signed with keycore or encoded raw for hand-made cases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from keycore import (
    ROLE_ENTITLEMENTS,
    Action,
    KeyToken,
    RevokedHolder,
    RevokedToken,
    Role,
    WeeklySchedule,
    Window,
    holder_id,
    issue,
    sign_revocation_list,
)
from tests.vectors.common import (
    DAY,
    HOUR,
    NOW,
    TYP_TOKEN,
    VIN,
    kid,
    sign1,
    signer,
    tid,
    xy,
)


@dataclass(frozen=True)
class Claims:
    """What a token says; ``issued()`` signs it with keycore, ``payload()`` encodes it raw."""

    token_id: bytes
    role: Role = Role.OWNER
    holder: str = "phone"
    vin: str = VIN
    not_before: int = NOW - HOUR
    expires: int = NOW - HOUR + 7 * DAY
    issued_at: int = NOW - HOUR
    entitlements: frozenset[Action] | None = None  # None: all the role may be granted
    schedule: WeeklySchedule | None = None

    @property
    def granted(self) -> frozenset[Action]:
        return ROLE_ENTITLEMENTS[self.role] if self.entitlements is None else self.entitlements

    def map(self) -> dict[int, Any]:
        return KeyToken(
            token_id=self.token_id,
            vin=self.vin,
            holder=xy(self.holder),
            role=self.role,
            entitlements=self.granted,
            not_before=self.not_before,
            expires=self.expires,
            issued_at=self.issued_at,
            schedule=self.schedule,
            kid=b"",
        ).claims()

    def payload(self) -> bytes:
        return cbor2.dumps(self.map())

    def issued(self, issuer: str = "issuer") -> bytes:
        token = issue(
            signer=signer(issuer),
            vin=self.vin,
            holder=signer(self.holder).public_key,
            role=self.role,
            now=self.issued_at,
            expires=self.expires,
            not_before=self.not_before,
            entitlements=self.entitlements,
            schedule=self.schedule,
            token_id=self.token_id,
        )
        assert token == sign1(issuer, self.payload(), TYP_TOKEN)  # the spec and the code agree
        return token

    def decoded(self, issuer: str = "issuer") -> dict[str, Any]:
        schedule = None
        if self.schedule is not None:
            schedule = {
                "utc_offset": self.schedule.utc_offset,
                "windows": [[w.days, w.start, w.end] for w in self.schedule.windows],
            }
        return {
            "token_id": self.token_id.hex(),
            "vin": self.vin,
            "holder": xy(self.holder).hex(),
            "holder_id": holder_id(xy(self.holder)).hex(),
            "role": self.role.name.lower(),
            "entitlements": [a.name.lower() for a in sorted(self.granted)],
            "not_before": self.not_before,
            "expires": self.expires,
            "issued_at": self.issued_at,
            "schedule": schedule,
            "kid": kid(issuer).hex(),
        }


OWNER = Claims(tid(1))
GUEST = Claims(
    tid(2),
    role=Role.GUEST,
    entitlements=frozenset({Action.UNLOCK, Action.LOCK}),
    expires=NOW + 2 * DAY,
    # weekdays 09:00-17:00 at UTC+1; NOW is Friday 09:00 local, the window's first minute
    schedule=WeeklySchedule(60, (Window(0b0011111, 9 * 60, 17 * 60),)),
)
REVOKED_TOKEN_ID = tid(90)
TOKEN_CONTEXT_REVOCATIONS = sign_revocation_list(
    signer("issuer"),
    vin=VIN,
    sequence=1,
    now=NOW - HOUR,
    tokens=[RevokedToken(REVOKED_TOKEN_ID, NOW + 6 * DAY)],
    holders=[RevokedHolder(holder_id(xy("other-phone")), before=NOW - DAY, until=NOW + 30 * DAY)],
)


def token_with(changes: dict[int, Any], *, key: str = "issuer", base: Claims = OWNER) -> bytes:
    """``base``'s claims with ``changes`` (None deletes a claim), re-signed by ``key``."""
    claims = base.map()
    for label, value in changes.items():
        if value is None:
            del claims[label]
        else:
            claims[label] = value
    return sign1(key, cbor2.dumps(claims), TYP_TOKEN)
