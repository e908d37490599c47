"""Per-vehicle revocation lists: issuer-signed, sequence-numbered, full or delta.

Two kinds of entry: one token (by id, kept until that token would have expired) and one holder
("every token of holder X issued before T", kept until ``until``, when all such tokens are dead).
Entries are only ever added; they leave a list only by expiry, so a delta carries additions alone,
and applying a delta whose base is at or behind what the car holds is always safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from keycore import cose
from keycore.encoding import as_bytes, as_int, as_list, as_map, dumps, loads_strict
from keycore.errors import InvalidRevocationList, InvalidState, Reason
from keycore.token import MAX_TIME, TOKEN_ID_BYTES, KeyToken, check_vin
from keycore.trust import MAX_SEQUENCE, TrustStore, open_signed

TYP_REVOCATION_LIST = "pk.rev"
MAX_REVOCATION_BYTES = 256 * 1024
MAX_ENTRIES = 10_000
#: The most phones (holders) one car has keys for, counting those whose keys were withdrawn
#: while the issuer still lists them. The issuer keeps one ledger entry per holder, so a list
#: holds at most this many entries: ``WORST_CASE_LIST_BYTES``, far under what a car reads.
MAX_VEHICLE_HOLDERS = 32
#: The largest list an issuer that keeps the bound above can sign (docs/protocol.md §12.1;
#: tests/keycore/test_revocation_bound.py signs it with every field at its widest).
WORST_CASE_LIST_BYTES = 1_301
MAX_STATE_ENTRIES = 2 * MAX_ENTRIES  # a car's merged state: a full list plus what it still keeps
HOLDER_ID_BYTES = 16

RL_VIN, RL_SEQ, RL_ISSUED_AT, RL_BASE, RL_TOKENS, RL_HOLDERS = 1, 2, 3, 4, 5, 6
_RL_KEYS = {RL_VIN, RL_SEQ, RL_ISSUED_AT, RL_BASE, RL_TOKENS, RL_HOLDERS}


@dataclass(frozen=True, slots=True)
class RevokedToken:
    token_id: bytes
    expires: int


@dataclass(frozen=True, slots=True)
class RevokedHolder:
    holder_id: bytes
    before: int  # tokens of this holder issued before this time are revoked
    until: int  # the entry can be pruned after this time


@dataclass(frozen=True, slots=True)
class RevocationListDocument:
    """A decoded, verified revocation list. ``base`` is 0 for a full list."""

    vin: str
    sequence: int
    issued_at: int
    base: int
    tokens: tuple[RevokedToken, ...]
    holders: tuple[RevokedHolder, ...]

    @property
    def is_delta(self) -> bool:
        return self.base > 0


def sign_revocation_list(
    signer: cose.Signer,
    *,
    vin: str,
    sequence: int,
    now: int,
    tokens: Iterable[RevokedToken] = (),
    holders: Iterable[RevokedHolder] = (),
    base: int = 0,
) -> bytes:
    """Sign a full list (``base`` = 0) or the delta of entries added after sequence ``base``."""
    check_vin(vin)
    if not 0 <= base < sequence <= MAX_SEQUENCE:
        raise ValueError("need 0 <= base < sequence")
    payload: dict[int, Any] = {
        RL_VIN: vin,
        RL_SEQ: sequence,
        RL_ISSUED_AT: now,
        RL_BASE: base,
        RL_TOKENS: [[t.token_id, t.expires] for t in tokens],
        RL_HOLDERS: [[h.holder_id, h.before, h.until] for h in holders],
    }
    return cose.sign1(dumps(payload), typ=TYP_REVOCATION_LIST, signer=signer)


def read_revocation_list(data: bytes, *, trust: TrustStore, now: float) -> RevocationListDocument:
    """Verify and decode a signed revocation list; raises InvalidRevocationList."""
    err = InvalidRevocationList
    msg, _ = open_signed(
        data,
        typ=TYP_REVOCATION_LIST,
        max_size=MAX_REVOCATION_BYTES,
        error=err,
        lookup=trust.lookup,
        now=now,
    )
    body = as_map(
        loads_strict(msg.payload, err, max_size=MAX_REVOCATION_BYTES), err, _RL_KEYS, _RL_KEYS
    )
    vin = body[RL_VIN]
    try:
        check_vin(vin)
    except ValueError:
        raise err(Reason.MALFORMED, "not a VIN") from None
    sequence = as_int(body[RL_SEQ], err, 1, MAX_SEQUENCE)
    tokens = []
    for item in as_list(body[RL_TOKENS], err, 0, MAX_ENTRIES):
        tid, expires = as_list(item, err, 2, 2)
        tokens.append(
            RevokedToken(
                as_bytes(tid, err, TOKEN_ID_BYTES, TOKEN_ID_BYTES),
                as_int(expires, err, 0, MAX_TIME),
            )
        )
    holders = []
    for item in as_list(body[RL_HOLDERS], err, 0, MAX_ENTRIES):
        hid, before, until = as_list(item, err, 3, 3)
        holders.append(
            RevokedHolder(
                as_bytes(hid, err, HOLDER_ID_BYTES, HOLDER_ID_BYTES),
                as_int(before, err, 0, MAX_TIME),
                as_int(until, err, 0, MAX_TIME),
            )
        )
    return RevocationListDocument(
        vin=vin,
        sequence=sequence,
        issued_at=as_int(body[RL_ISSUED_AT], err, 0, MAX_TIME),
        base=as_int(body[RL_BASE], err, 0, sequence - 1),
        tokens=tuple(tokens),
        holders=tuple(holders),
    )


@dataclass(frozen=True, slots=True)
class RevocationState:
    """What one car knows is revoked, at a sequence. Immutable: ``apply`` returns a new state."""

    vin: str
    sequence: int = 0
    tokens: Mapping[bytes, int] = field(default_factory=lambda: MappingProxyType({}))
    holders: Mapping[bytes, tuple[int, int]] = field(default_factory=lambda: MappingProxyType({}))

    def is_revoked(self, token: KeyToken) -> bool:
        if token.token_id in self.tokens:
            return True
        entry = self.holders.get(token.holder_id)
        return entry is not None and token.issued_at < entry[0]

    def apply(self, data: bytes, *, trust: TrustStore, now: float) -> RevocationState:
        """The state after a verified list that is newer than this one.

        A full list is merged into the state; a delta too, if its base is at or behind this
        state's sequence (``gap`` otherwise, and the car asks for a full list). Entries that have
        ended at ``now`` are pruned.
        """
        doc = read_revocation_list(data, trust=trust, now=now)
        if doc.vin != self.vin:
            raise InvalidRevocationList(Reason.WRONG_VEHICLE)
        if doc.sequence <= self.sequence:
            raise InvalidRevocationList(Reason.STALE, f"sequence {doc.sequence} <= {self.sequence}")
        if doc.is_delta and doc.base > self.sequence:
            raise InvalidRevocationList(Reason.GAP, f"delta from {doc.base}, have {self.sequence}")
        # A full list is merged, not swapped in: the issuer prunes entries a day after they end,
        # and a car whose clock lags must keep what it still needs. Entries only ever leave a
        # car's state by expiry at the car's own trusted time.
        # Ended entries are dropped before merging, so a dead holder entry can never widen a
        # live one: the result is the same whichever mix of full lists and deltas got here.
        current = self.pruned(now)
        tokens = dict(current.tokens)
        holders = dict(current.holders)
        for t in doc.tokens:
            if t.expires >= now:
                tokens[t.token_id] = max(t.expires, tokens.get(t.token_id, 0))
        for h in doc.holders:
            if h.until >= now:
                old = holders.get(h.holder_id, (0, 0))
                holders[h.holder_id] = (max(h.before, old[0]), max(h.until, old[1]))
        return RevocationState(
            self.vin, doc.sequence, MappingProxyType(tokens), MappingProxyType(holders)
        )

    def pruned(self, now: float) -> RevocationState:
        """Without entries that can no longer match a live token at ``now``."""
        tokens = {tid: exp for tid, exp in self.tokens.items() if exp >= now}
        holders = {hid: e for hid, e in self.holders.items() if e[1] >= now}
        return RevocationState(
            self.vin, self.sequence, MappingProxyType(tokens), MappingProxyType(holders)
        )

    def __len__(self) -> int:
        return len(self.tokens) + len(self.holders)

    def encode(self) -> bytes:
        """Persistable form for the car's own storage: ``[vin, sequence, tokens, holders]``.

        Local state, written by the car itself after verifying the signed lists that built it.
        """
        return dumps(
            [
                self.vin,
                self.sequence,
                [[tid, exp] for tid, exp in self.tokens.items()],
                [[hid, before, until] for hid, (before, until) in self.holders.items()],
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> RevocationState:
        """Rebuild persisted state; raises InvalidState if it is damaged in any way."""
        err = InvalidState
        vin, sequence, tokens, holders = as_list(
            loads_strict(data, err, max_size=MAX_REVOCATION_BYTES), err, 4, 4
        )
        try:
            check_vin(vin)
        except ValueError:
            raise err(Reason.MALFORMED, "not a VIN") from None
        token_map: dict[bytes, int] = {}
        for item in as_list(tokens, err, 0, MAX_STATE_ENTRIES):
            tid, exp = as_list(item, err, 2, 2)
            token_map[as_bytes(tid, err, TOKEN_ID_BYTES, TOKEN_ID_BYTES)] = as_int(
                exp, err, 0, MAX_TIME
            )
        holder_map: dict[bytes, tuple[int, int]] = {}
        for item in as_list(holders, err, 0, MAX_STATE_ENTRIES):
            hid, before, until = as_list(item, err, 3, 3)
            holder_map[as_bytes(hid, err, HOLDER_ID_BYTES, HOLDER_ID_BYTES)] = (
                as_int(before, err, 0, MAX_TIME),
                as_int(until, err, 0, MAX_TIME),
            )
        if len(token_map) != len(tokens) or len(holder_map) != len(holders):
            raise err(Reason.MALFORMED, "an entry appears twice")
        return cls(
            vin,
            as_int(sequence, err, 0, MAX_SEQUENCE),
            MappingProxyType(token_map),
            MappingProxyType(holder_map),
        )


@dataclass(slots=True)
class RevocationLedger:
    """The issuer's history of one vehicle's revocations, from which full and delta lists are cut.

    Pure bookkeeping: a store persists it. Every revocation takes the next sequence number.
    """

    vin: str
    sequence: int = 0
    entries: list[tuple[int, RevokedToken | RevokedHolder]] = field(default_factory=list)

    def revoke_token(self, token_id: bytes, expires: int) -> int:
        return self._add(RevokedToken(token_id, expires))

    def revoke_holder(self, holder_id: bytes, *, before: int, until: int) -> int:
        return self._add(RevokedHolder(holder_id, before, until))

    def _add(self, entry: RevokedToken | RevokedHolder) -> int:
        self.sequence += 1
        self.entries.append((self.sequence, entry))
        return self.sequence

    def prune(self, now: int, grace: int = 86_400) -> None:
        """Drop entries dead for longer than ``grace`` (cars with a lagging clock keep theirs)."""
        self.entries = [(s, e) for s, e in self.entries if _end(e) + grace >= now]

    def document(self, signer: cose.Signer, *, now: int, since: int = 0) -> bytes:
        """The full list (``since`` = 0) or the delta of everything after ``since``."""
        if self.sequence == 0:
            raise ValueError("nothing revoked yet: an empty list has no sequence")
        if not 0 <= since < self.sequence:
            raise ValueError("since must be below the current sequence")
        chosen = [e for s, e in self.entries if s > since]
        return sign_revocation_list(
            signer,
            vin=self.vin,
            sequence=self.sequence,
            now=now,
            base=since,
            tokens=[e for e in chosen if isinstance(e, RevokedToken)],
            holders=[e for e in chosen if isinstance(e, RevokedHolder)],
        )


def _end(entry: RevokedToken | RevokedHolder) -> int:
    return entry.expires if isinstance(entry, RevokedToken) else entry.until
