"""keycore: phonekey's pure core — key tokens, trust store, revocation lists, trusted time, proofs.

No I/O anywhere: bytes and ``now`` in, values or one opaque error with a reason code out.
"""

from keycore.cose import ES256, Signer, SoftwareSigner, holder_id, key_id
from keycore.decision import UnlockDecision, UnlockRequest, decide
from keycore.errors import (
    InvalidProof,
    InvalidRevocationList,
    InvalidSignedTime,
    InvalidState,
    InvalidToken,
    InvalidTrustUpdate,
    IssueError,
    KeycoreError,
    Reason,
)
from keycore.proof import ChallengeBook, prove, verify_proof
from keycore.revocation import (
    RevocationLedger,
    RevocationState,
    RevokedHolder,
    RevokedToken,
    read_revocation_list,
    sign_revocation_list,
)
from keycore.roles import ROLE_ENTITLEMENTS, ROLE_MAX_LIFETIME, Action, Role
from keycore.schedule import WeeklySchedule, Window
from keycore.timekeeping import TrustedClock, read_signed_time, sign_time
from keycore.token import KeyToken, issue
from keycore.trust import (
    IssuerKey,
    IssuerKeyRing,
    KeyStatus,
    TrustedKey,
    TrustStore,
    sign_trust_update,
)
from keycore.verifier import KeyGrant, verify

__all__ = [
    "ES256",
    "ROLE_ENTITLEMENTS",
    "ROLE_MAX_LIFETIME",
    "Action",
    "ChallengeBook",
    "InvalidProof",
    "InvalidRevocationList",
    "InvalidSignedTime",
    "InvalidState",
    "InvalidToken",
    "InvalidTrustUpdate",
    "IssueError",
    "IssuerKey",
    "IssuerKeyRing",
    "KeyGrant",
    "KeyStatus",
    "KeyToken",
    "KeycoreError",
    "Reason",
    "RevocationLedger",
    "RevocationState",
    "RevokedHolder",
    "RevokedToken",
    "Role",
    "Signer",
    "SoftwareSigner",
    "TrustStore",
    "TrustedClock",
    "TrustedKey",
    "UnlockDecision",
    "UnlockRequest",
    "WeeklySchedule",
    "Window",
    "decide",
    "holder_id",
    "issue",
    "key_id",
    "prove",
    "read_revocation_list",
    "read_signed_time",
    "sign_revocation_list",
    "sign_time",
    "sign_trust_update",
    "verify",
    "verify_proof",
]
