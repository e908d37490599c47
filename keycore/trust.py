"""Issuer keys: the car's trust store, the root-signed updates that change it, the issuer's ring.

The trust store maps each key id to exactly one algorithm, key and validity window. It changes only
through trust-store updates signed by the root key and numbered by a sequence that must grow, so a
car learns new issuer keys and forgets compromised ones while offline, carried by any phone, and an
old update can never undo a newer one. An update is the complete set of trusted issuer keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from keycore import cose
from keycore.encoding import as_int, as_list, as_map, dumps, loads_strict
from keycore.errors import InvalidTrustUpdate, KeycoreError, Reason
from keycore.token import MAX_TIME

TYP_TRUST_UPDATE = "pk.trust"
MAX_TRUST_UPDATE_BYTES = 16 * 1024
MAX_TRUSTED_KEYS = 64
MAX_SEQUENCE = 2**63 - 1

TU_SEQ, TU_ISSUED_AT, TU_KEYS = 1, 2, 3
TK_KEY, TK_NBF, TK_EXP = 1, 2, 3


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One issuer key the car trusts: its id, algorithm, public key and validity window."""

    kid: bytes
    alg: int
    public_key: ec.EllipticCurvePublicKey = field(compare=False)
    not_before: int
    not_after: int

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now <= self.not_after


def open_signed(
    data: bytes,
    *,
    typ: str | int,
    max_size: int,
    error: type[KeycoreError],
    lookup: Callable[[bytes], TrustedKey | None],
    now: float | None = None,
    unknown: str = "",
) -> tuple[cose.Sign1, TrustedKey]:
    """Open a signed document of type ``typ``: envelope, key id, algorithm and signature checked.

    The one way every keycore document is opened. Refusals, in order: too_large and malformed
    (envelope, protected header, wrong ``typ``), unknown_key (``lookup`` knows no key for the
    kid, or, when ``now`` is given, the key is not valid at ``now``; ``unknown`` is the detail),
    algorithm_mismatch, bad_signature. The payload is not decoded: that is the document's own.
    """
    msg = cose.parse_sign1(data, typ=typ, max_size=max_size, error=error)
    key = lookup(msg.kid)
    if key is None or (now is not None and not key.valid_at(now)):
        raise error(Reason.UNKNOWN_KEY, unknown)
    # The header's algorithm must be the one pinned for this key id: never trust the header alone.
    if msg.alg != key.alg:
        raise error(Reason.ALGORITHM_MISMATCH)
    if not cose.verify_es256(key.public_key, msg.signature, msg.to_be_signed()):
        raise error(Reason.BAD_SIGNATURE)
    return msg, key


@dataclass(frozen=True, slots=True)
class TrustStore:
    """What a car (or a phone, or a server) trusts: a root key and the issuer keys it vouched for.

    Immutable: ``apply`` returns a new store. Persist ``update`` (the last applied signed update)
    and rebuild with ``TrustStore.restore``; the signature is checked again on the way in.
    """

    root: ec.EllipticCurvePublicKey
    sequence: int = 0
    keys: Mapping[bytes, TrustedKey] = field(default_factory=lambda: MappingProxyType({}))
    update: bytes | None = None

    @property
    def root_kid(self) -> bytes:
        return cose.key_id(self.root)

    def lookup(self, kid: bytes) -> TrustedKey | None:
        return self.keys.get(kid)

    def apply(self, update: bytes) -> TrustStore:
        """The store after a verified, newer update; raises InvalidTrustUpdate otherwise."""
        root = TrustedKey(self.root_kid, cose.ES256, self.root, 0, MAX_TIME)
        msg, _ = open_signed(
            update,
            typ=TYP_TRUST_UPDATE,
            max_size=MAX_TRUST_UPDATE_BYTES,
            error=InvalidTrustUpdate,
            lookup=lambda kid: root if kid == root.kid else None,
            unknown="not signed by this store's root",
        )
        sequence, keys = _decode_update(msg.payload)
        if sequence <= self.sequence:
            raise InvalidTrustUpdate(Reason.STALE, f"sequence {sequence} <= {self.sequence}")
        return TrustStore(self.root, sequence, MappingProxyType(keys), bytes(update))

    @classmethod
    def restore(cls, root: ec.EllipticCurvePublicKey, update: bytes | None) -> TrustStore:
        store = cls(root)
        return store if update is None else store.apply(update)


def _decode_update(payload: bytes) -> tuple[int, dict[bytes, TrustedKey]]:
    err = InvalidTrustUpdate
    body = as_map(
        loads_strict(payload, err, max_size=MAX_TRUST_UPDATE_BYTES),
        err,
        {TU_SEQ, TU_ISSUED_AT, TU_KEYS},
        {TU_SEQ, TU_ISSUED_AT, TU_KEYS},
    )
    sequence = as_int(body[TU_SEQ], err, 1, MAX_SEQUENCE)
    as_int(body[TU_ISSUED_AT], err, 0, MAX_TIME)
    keys: dict[bytes, TrustedKey] = {}
    for item in as_list(body[TU_KEYS], err, 0, MAX_TRUSTED_KEYS):
        entry = as_map(item, err, {TK_KEY, TK_NBF, TK_EXP}, {TK_KEY, TK_NBF, TK_EXP})
        xy, kid = cose.parse_cose_key(entry[TK_KEY], err, with_kid=True)
        assert kid is not None
        try:
            public_key = cose.load_point(xy)
        except ValueError:
            raise err(Reason.MALFORMED, "issuer key is not on P-256") from None
        if kid != cose.key_id(public_key):
            raise err(Reason.MALFORMED, "kid does not match the key")
        if kid in keys:
            raise err(Reason.MALFORMED, "a key id appears twice")
        nbf = as_int(entry[TK_NBF], err, 0, MAX_TIME)
        keys[kid] = TrustedKey(
            kid, cose.ES256, public_key, nbf, as_int(entry[TK_EXP], err, nbf, MAX_TIME)
        )
    return sequence, keys


def sign_trust_update(
    root: cose.Signer, *, sequence: int, now: int, keys: Iterable[TrustedKey]
) -> bytes:
    """A root-signed update that makes ``keys`` the complete set of trusted issuer keys."""
    if not 1 <= sequence <= MAX_SEQUENCE:
        raise ValueError("sequence must be a positive 63-bit integer")
    entries = [
        {
            TK_KEY: cose.cose_key(k.public_key, kid=k.kid),
            TK_NBF: k.not_before,
            TK_EXP: k.not_after,
        }
        for k in keys
    ]
    payload = dumps({TU_SEQ: sequence, TU_ISSUED_AT: now, TU_KEYS: entries})
    return cose.sign1(payload, typ=TYP_TRUST_UPDATE, signer=root)


class KeyStatus(StrEnum):
    NEXT = "next"  # published to cars ahead of use, not yet signing
    ACTIVE = "active"  # signs new tokens, lists and time answers
    RETIRED = "retired"  # no longer signs; trusted until its last token has expired


@dataclass(frozen=True, slots=True)
class IssuerKey:
    signer: cose.Signer
    status: KeyStatus
    not_before: int
    not_after: int

    @property
    def kid(self) -> bytes:
        return self.signer.kid

    def trusted(self) -> TrustedKey:
        return TrustedKey(
            self.kid, cose.ES256, self.signer.public_key, self.not_before, self.not_after
        )


@dataclass(frozen=True, slots=True)
class IssuerKeyRing:
    """The issuer's signing keys with rotation: next → active → retired → dropped.

    Rotation makes the pre-published next key active, retires the old active key (trusted only as
    long as the tokens it signed can live) and creates a new next key. ``drop`` forgets a key at
    once (compromise): the next trust update no longer lists it, so cars stop trusting it.
    """

    keys: tuple[IssuerKey, ...]
    key_lifetime: int
    max_token_lifetime: int

    @classmethod
    def create(
        cls,
        *,
        now: int,
        key_lifetime: int = 365 * 86_400,
        max_token_lifetime: int = 30 * 86_400,
        new_signer: Any = cose.SoftwareSigner.generate,
    ) -> IssuerKeyRing:
        active = IssuerKey(new_signer(), KeyStatus.ACTIVE, now, now + key_lifetime)
        upcoming = IssuerKey(new_signer(), KeyStatus.NEXT, now, now + 2 * key_lifetime)
        return cls((active, upcoming), key_lifetime, max_token_lifetime)

    @property
    def active(self) -> IssuerKey:
        return next(k for k in self.keys if k.status is KeyStatus.ACTIVE)

    def find(self, kid: bytes) -> IssuerKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    def rotate(self, *, now: int, new_signer: Any = cose.SoftwareSigner.generate) -> IssuerKeyRing:
        kept: list[IssuerKey] = []
        for key in self.keys:
            if key.status is KeyStatus.ACTIVE:
                retire_at = min(key.not_after, now + self.max_token_lifetime)
                kept.append(replace(key, status=KeyStatus.RETIRED, not_after=retire_at))
            elif key.status is KeyStatus.NEXT:
                kept.append(replace(key, status=KeyStatus.ACTIVE))
            elif key.not_after >= now:  # retired keys whose tokens may still be alive
                kept.append(key)
        kept.append(IssuerKey(new_signer(), KeyStatus.NEXT, now, now + 2 * self.key_lifetime))
        return replace(self, keys=tuple(kept))

    def drop(self, kid: bytes) -> IssuerKeyRing:
        """Forget a retired or next key (e.g. compromised). The active key is rotated away first."""
        key = self.find(kid)
        if key is None:
            raise KeyError("no such key")
        if key.status is KeyStatus.ACTIVE:
            raise ValueError("rotate before dropping the active key")
        return replace(self, keys=tuple(k for k in self.keys if k.kid != kid))

    def trusted_keys(self) -> list[TrustedKey]:
        return [k.trusted() for k in self.keys]

    def trust_update(self, root: cose.Signer, *, sequence: int, now: int) -> bytes:
        return sign_trust_update(root, sequence=sequence, now=now, keys=self.trusted_keys())
