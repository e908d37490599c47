"""Property and fuzz tests: every keycore decoder refuses bad input with its documented error only.

Random bytes, random mutations of valid documents (bit flips, truncation, insertion, byte
replacement, deletion, duplication, splicing with other documents) and hypothesis-built CBOR values
in a correctly signed COSE_Sign1 envelope go into every decoder. Each must return normally or raise
its own error type with a reason code — never another exception — and a mutation of a signed
document is never accepted as a *different* document. Then roundtrip properties: issue → verify,
schedules against a datetime reference, revocation deltas against full lists, and a clock that
only moves forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import cbor2
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from keycore import (
    ROLE_ENTITLEMENTS,
    ROLE_MAX_LIFETIME,
    Action,
    ChallengeBook,
    InvalidProof,
    InvalidRevocationList,
    InvalidSignedTime,
    InvalidState,
    InvalidToken,
    InvalidTrustUpdate,
    KeycoreError,
    Reason,
    RevocationLedger,
    RevocationState,
    RevokedHolder,
    RevokedToken,
    Role,
    SoftwareSigner,
    TrustedClock,
    TrustStore,
    UnlockDecision,
    UnlockRequest,
    WeeklySchedule,
    Window,
    cose,
    decide,
    issue,
    prove,
    read_revocation_list,
    read_signed_time,
    sign_time,
    verify,
    verify_proof,
)
from keycore.cose import point_bytes
from keycore.revocation import TYP_REVOCATION_LIST
from keycore.timekeeping import TYP_SIGNED_TIME
from keycore.token import TYP_KEY_TOKEN
from keycore.trust import TYP_TRUST_UPDATE
from tests.conftest import DAY, NOW, OTHER_VIN, VIN, World

FUZZ = settings(max_examples=250, deadline=None)
FEW = settings(max_examples=100, deadline=None)

CHALLENGE = bytes(range(32))
NONCE = b"\x5a" * 24
BOOT = "boot-1"
#: P-256 group order, for the (r, n − s) signature malleability check.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


# ---------------------------------------------------------------------------------------------
# The decoders under test, each with valid documents to mutate


@dataclass(frozen=True, repr=False)
class Decoder:
    name: str
    error: type[KeycoreError]
    run: Callable[[bytes], Any]  # returns a comparable view of what was accepted
    valid: tuple[bytes, ...]  # valid documents, mutated by the tests
    signed: bool = True  # a mutation of a signed document must never be a different document


def _revocation_view(state: RevocationState) -> tuple[object, ...]:
    return (state.vin, state.sequence, dict(state.tokens), dict(state.holders))


def _trust_view(store: TrustStore) -> tuple[object, ...]:
    keys = sorted((k.kid, k.alg, k.not_before, k.not_after) for k in store.keys.values())
    return (store.sequence, keys)


@dataclass(frozen=True, repr=False)
class Fixture:
    world: World
    owner_token: bytes
    guest_token: bytes
    proof: bytes
    revocation_full: bytes
    revocation_delta: bytes
    trust_update: bytes
    signed_time: bytes
    clock_state: bytes
    decoders: dict[str, Decoder]

    def __repr__(self) -> str:  # keep hypothesis failure reports short
        return "Fixture(...)"


@pytest.fixture(scope="module")
def fx(world: World) -> Fixture:
    schedule = WeeklySchedule(60, (Window(0b0011111, 8 * 60, 18 * 60), Window(0b1100000, 0, 60)))
    owner_token = world.token()
    guest_token = world.token(Role.GUEST, schedule=schedule, not_before=NOW - DAY)
    proof = prove(
        world.phone, challenge=CHALLENGE, vin=VIN, action=Action.UNLOCK, token=owner_token
    )

    ledger = RevocationLedger(VIN)
    ledger.revoke_token(b"\x01" * 16, NOW + DAY)
    ledger.revoke_holder(b"\x02" * 16, before=NOW, until=NOW + 30 * DAY)
    ledger.revoke_token(b"\x03" * 16, NOW + 2 * DAY)
    revocation_full = ledger.document(world.issuer, now=NOW)
    revocation_delta = ledger.document(world.issuer, now=NOW, since=1)
    state_at_1 = RevocationState(VIN).apply(
        RevocationLedger(VIN, 1, ledger.entries[:1]).document(world.issuer, now=NOW),
        trust=world.trust,
        now=NOW,
    )

    rotated = world.ring.rotate(now=NOW)
    trust_update = rotated.trust_update(world.root, sequence=2, now=NOW)
    signed_time = sign_time(world.issuer, nonce=NONCE, now=NOW + 5)
    clock = TrustedClock.provisioned(now=NOW, mono=100.0, boot_id=BOOT)
    clock_state = clock.encode(200.0)

    def run_verify(data: bytes) -> object:
        grant = verify(
            data,
            vin=VIN,
            action=Action.UNLOCK,
            now=NOW + 60,
            trust=world.trust,
            revocations=world.revocations,
        )
        return grant.token

    def run_proof(data: bytes) -> object:
        verify_proof(
            data,
            holder=world.phone.public_key,
            challenge=CHALLENGE,
            vin=VIN,
            action=Action.UNLOCK,
            token=owner_token,
        )
        return None

    def run_read_list(data: bytes) -> object:
        return read_revocation_list(data, trust=world.trust, now=NOW)

    def run_apply_list(data: bytes) -> object:
        return _revocation_view(state_at_1.apply(data, trust=world.trust, now=NOW))

    def run_trust(data: bytes) -> object:
        return _trust_view(world.trust.apply(data))

    def run_read_time(data: bytes) -> object:
        return read_signed_time(data, nonce=NONCE, trust=world.trust)

    def run_accept_time(data: bytes) -> object:
        reset = TrustedClock.unknown(mono=0.0, boot_id=BOOT)
        return reset.accept_signed_time(data, nonce=NONCE, mono=1.0, trust=world.trust)

    def run_restore(data: bytes) -> object:
        return TrustedClock.restore(data, mono=300.0, boot_id=BOOT)

    tokens = (owner_token, guest_token)
    lists = (revocation_full, revocation_delta)
    decoders = [
        Decoder("verify", InvalidToken, run_verify, tokens),
        Decoder("verify_proof", InvalidProof, run_proof, (proof,)),
        Decoder("read_revocation_list", InvalidRevocationList, run_read_list, lists),
        Decoder("RevocationState.apply", InvalidRevocationList, run_apply_list, lists),
        Decoder("TrustStore.apply", InvalidTrustUpdate, run_trust, (trust_update,)),
        Decoder("read_signed_time", InvalidSignedTime, run_read_time, (signed_time,)),
        Decoder("accept_signed_time", InvalidSignedTime, run_accept_time, (signed_time,)),
        Decoder("TrustedClock.restore", InvalidState, run_restore, (clock_state,), signed=False),
    ]
    return Fixture(
        world,
        owner_token,
        guest_token,
        proof,
        revocation_full,
        revocation_delta,
        trust_update,
        signed_time,
        clock_state,
        {d.name: d for d in decoders},
    )


DECODERS = [
    "verify",
    "verify_proof",
    "read_revocation_list",
    "RevocationState.apply",
    "TrustStore.apply",
    "read_signed_time",
    "accept_signed_time",
    "TrustedClock.restore",
]

_REFUSED = object()


def run_only(decoder: Decoder, data: object) -> object:
    """Run ``decoder``: its result, or ``_REFUSED`` if it raised exactly its documented error.

    Any other exception propagates and fails the test.
    """
    try:
        return decoder.run(data)  # type: ignore[arg-type]
    except KeycoreError as error:
        refused = error
        if currently_in_test_context():  # reasons seen: pytest --hypothesis-show-statistics
            event(f"{decoder.name}: {error.reason.value}")
    assert type(refused) is decoder.error, f"{decoder.name} raised {refused!r}"
    assert isinstance(refused.reason, Reason)
    assert str(refused) == decoder.error.message  # opaque to the other party
    return _REFUSED


# ---------------------------------------------------------------------------------------------
# Strategies


MUTATIONS = ("flip", "truncate", "insert", "replace", "delete", "duplicate", "splice")


@st.composite
def mutated(draw: st.DrawFn, docs: tuple[bytes, ...], donors: tuple[bytes, ...]) -> bytes:
    """One of ``docs`` after one to four random mutations (possibly spliced with a donor)."""
    data = bytearray(draw(st.sampled_from(docs)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(MUTATIONS))
        n = len(data)
        if kind == "flip" and n:
            data[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[draw(st.integers(0, n)) :]
        elif kind == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "replace" and n:
            data[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        elif kind == "delete" and n:
            at = draw(st.integers(0, n - 1))
            del data[at : draw(st.integers(at + 1, min(n, at + 16)))]
        elif kind == "duplicate" and n:
            at = draw(st.integers(0, n - 1))
            chunk = data[at : draw(st.integers(at + 1, min(n, at + 16)))]
            data[at:at] = chunk
        elif kind == "splice":
            donor = draw(st.sampled_from(donors))
            cut, start = draw(st.integers(0, n)), draw(st.integers(0, len(donor)))
            data = data[:cut] + donor[start:]
    return bytes(data)


TAGS = st.sampled_from([0, 1, 2, 3, 4, 5, 18, 21, 24, 28, 29, 30, 32, 37, 258, 55799])

cbor_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.integers(min_value=-(2**200), max_value=2**200),  # bignums (tags 2 and 3)
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=80),
    st.text(max_size=24),
    st.sampled_from([VIN, OTHER_VIN, NOW, -7, 61, "pk.rev", "pk.trust", "pk.time", b"\x00" * 16]),
)
cbor_keys = st.one_of(
    st.integers(min_value=-70_000, max_value=70_000),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.booleans(),
    st.floats(allow_nan=False),
)
cbor_values = st.recursive(
    cbor_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(cbor_keys, children, max_size=6),
        st.builds(cbor2.CBORTag, TAGS | st.integers(0, 2**64 - 1), children),
    ),
    max_leaves=24,
)


@st.composite
def tree_mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` (a nest of dicts and lists) with one random node replaced, removed or added."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value, key=repr)))
        op = draw(st.sampled_from(["descend", "descend", "delete", "add"]))
        out = dict(value)
        if op == "descend":
            out[key] = draw(tree_mutated(value[key]))
        elif op == "delete":
            del out[key]
        else:
            out[draw(cbor_keys)] = draw(cbor_values)
        return out
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        at = draw(st.integers(0, len(value) - 1))
        op = draw(st.sampled_from(["descend", "descend", "delete", "add"]))
        out_list = list(value)
        if op == "descend":
            out_list[at] = draw(tree_mutated(value[at]))
        elif op == "delete":
            del out_list[at]
        else:
            out_list.insert(at, draw(cbor_values))
        return out_list
    return draw(cbor_values)


def envelope(protected: object, unprotected: object, payload: object, signature: object) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, signature]))


# ---------------------------------------------------------------------------------------------
# Random bytes and mutations of valid documents into every decoder


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(data=st.binary(max_size=600) | st.binary(max_size=300).map(lambda b: b"\xd2\x84" + b))
@example(data=b"")
@example(data=b"\xd2\x84")
@example(data=b"\xd2\x84\x40\xa0\x40\x58\x40" + b"\x00" * 64)
@example(data=b"\x81" * 5000)  # nesting far beyond the depth limit
@example(data=b"\xff" * 300_000)  # larger than every size cap
def test_random_bytes_are_refused_with_the_documented_error(
    fx: Fixture, name: str, data: bytes
) -> None:
    decoder = fx.decoders[name]
    result = run_only(decoder, data)
    if decoder.signed:
        assert result is _REFUSED


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(data=st.data())
def test_mutated_documents_are_refused_or_unchanged(
    fx: Fixture, name: str, data: st.DataObject
) -> None:
    decoder = fx.decoders[name]
    donors = (
        fx.owner_token,
        fx.guest_token,
        fx.revocation_full,
        fx.trust_update,
        fx.signed_time,
        fx.clock_state,
    )
    doc = data.draw(mutated(decoder.valid, donors))
    result = run_only(decoder, doc)
    if decoder.signed and result is not _REFUSED:
        # Still accepted: then it must say exactly what one of the originals said.
        assert result in [decoder.run(original) for original in decoder.valid]


@pytest.mark.parametrize("name", DECODERS)
def test_non_bytes_inputs_are_refused_with_the_documented_error(fx: Fixture, name: str) -> None:
    decoder = fx.decoders[name]
    for value in (None, 0, "text", [1, 2], {"a": 1}, 1.5, object()):
        assert run_only(decoder, value) is _REFUSED


@FUZZ
@given(data=st.data())
def test_mutated_tokens_that_verify_carry_the_same_claims(fx: Fixture, data: st.DataObject) -> None:
    token = data.draw(st.sampled_from([fx.owner_token, fx.guest_token]))
    run = fx.decoders["verify"].run
    donors = (fx.owner_token, fx.guest_token, fx.revocation_full)
    doc = data.draw(mutated((token,), donors))
    result = run_only(fx.decoders["verify"], doc)
    if result is not _REFUSED:
        # Splicing can rebuild a whole donor token; nothing else may be accepted.
        assert result == run(token) or (doc in donors and result == run(doc))


def test_signature_malleability_cannot_change_the_claims(fx: Fixture) -> None:
    # ECDSA accepts (r, n − s) as well as (r, s): the bytes change, the accepted claims must not.
    token = fx.owner_token
    s = int.from_bytes(token[-32:], "big")
    malleated = token[:-32] + (P256_ORDER - s).to_bytes(32, "big")
    assert malleated != token
    result = run_only(fx.decoders["verify"], malleated)
    assert result is _REFUSED or result == fx.decoders["verify"].run(token)


# ---------------------------------------------------------------------------------------------
# decide() never raises, and never grants a token it was not asked to


def _decide(fx: Fixture, request: UnlockRequest, *, reset: bool = False) -> UnlockDecision:
    book = ChallengeBook(random_bytes=lambda n: CHALLENGE[:n])
    book.issue(mono=0.0)
    clock = TrustedClock.provisioned(now=NOW + 60, mono=0.0, boot_id=BOOT)
    if reset:
        clock = TrustedClock.restore(clock.encode(0.0), mono=0.0, boot_id="another-boot")
    return decide(
        request,
        vin=VIN,
        trust=fx.world.trust,
        revocations=fx.world.revocations,
        clock=clock,
        challenges=book,
        mono=1.0,
    )


def test_decide_grants_the_unmutated_request(fx: Fixture) -> None:
    decision = _decide(fx, UnlockRequest(fx.owner_token, Action.UNLOCK, CHALLENGE, fx.proof))
    assert decision.allowed, decision.reason
    assert decision.code == "granted"


@FUZZ
@given(data=st.data())
def test_decide_denies_every_mutated_token(fx: Fixture, data: st.DataObject) -> None:
    donors = (fx.owner_token, fx.guest_token, fx.revocation_full, fx.trust_update)
    token = data.draw(mutated((fx.owner_token,), donors))
    reset = data.draw(st.booleans())
    decision = _decide(fx, UnlockRequest(token, Action.UNLOCK, CHALLENGE, fx.proof), reset=reset)
    if token == fx.owner_token:
        assert decision.allowed
    else:
        # The proof signs SHA-256 of the exact token bytes: no other token can be granted.
        assert not decision.allowed
        assert isinstance(decision.reason, Reason)


@FUZZ
@given(data=st.data())
def test_decide_denies_every_mutated_proof(fx: Fixture, data: st.DataObject) -> None:
    proof = data.draw(mutated((fx.proof,), (fx.proof, fx.owner_token)))
    decision = _decide(fx, UnlockRequest(fx.owner_token, Action.UNLOCK, CHALLENGE, proof))
    if proof == fx.proof:
        assert decision.allowed
    else:
        assert not decision.allowed
        assert decision.reason in (Reason.MALFORMED, Reason.BAD_PROOF)


garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=300),
    st.binary(max_size=300).map(bytearray),
    st.binary(max_size=64).map(memoryview),
    st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)


@FUZZ
@given(
    token=garbage | st.just(b"valid"),
    action=garbage | st.sampled_from(list(Action)),
    challenge=garbage | st.just(CHALLENGE),
    proof=garbage | st.just(b"valid"),
    reset=st.booleans(),
)
def test_decide_never_raises_for_garbage_fields(
    fx: Fixture, token: object, action: object, challenge: object, proof: object, reset: bool
) -> None:
    token = fx.owner_token if token == b"valid" else token
    proof = fx.proof if proof == b"valid" else proof
    request = UnlockRequest(token, action, challenge, proof)  # type: ignore[arg-type]
    decision = _decide(fx, request, reset=reset)
    assert isinstance(decision, UnlockDecision)
    everything_valid = (
        token is fx.owner_token
        and proof is fx.proof
        and challenge is CHALLENGE
        and type(action) is Action
    )
    if not everything_valid:
        assert not decision.allowed
        assert isinstance(decision.reason, Reason)


# ---------------------------------------------------------------------------------------------
# Structured fuzz: hypothesis-built CBOR in a correctly signed envelope


def _signed(payload: bytes, typ: str | int, signer: SoftwareSigner) -> bytes:
    return cose.sign1(payload, typ=typ, signer=signer)


def _token_claims(fx: Fixture) -> dict[int, Any]:
    return cbor2.loads(
        cose.parse_sign1(fx.guest_token, typ=61, max_size=1024, error=InvalidToken).payload
    )


def _run_all(fx: Fixture, typ: str | int, doc: bytes) -> None:
    """Feed ``doc`` to every decoder of document type ``typ``; only documented errors."""
    names = {
        TYP_KEY_TOKEN: ["verify"],
        TYP_REVOCATION_LIST: ["read_revocation_list", "RevocationState.apply"],
        TYP_TRUST_UPDATE: ["TrustStore.apply"],
        TYP_SIGNED_TIME: ["read_signed_time", "accept_signed_time"],
    }[typ]
    for name in names:
        run_only(fx.decoders[name], doc)


TYPS = st.sampled_from([TYP_KEY_TOKEN, TYP_REVOCATION_LIST, TYP_TRUST_UPDATE, TYP_SIGNED_TIME])


@FUZZ
@given(typ=TYPS, value=cbor_values)
@example(typ=TYP_KEY_TOKEN, value=cbor2.CBORTag(28, [cbor2.CBORTag(29, 0)]))
@example(typ=TYP_TRUST_UPDATE, value={1: 2**64, 2: NOW, 3: []})
@example(typ=TYP_SIGNED_TIME, value={1: NONCE, 2: 2**70})
def test_any_cbor_payload_in_a_signed_envelope(fx: Fixture, typ: str | int, value: Any) -> None:
    signer = fx.world.root if typ == TYP_TRUST_UPDATE else fx.world.issuer
    _run_all(fx, typ, _signed(cbor2.dumps(value), typ, signer))


def _near_valid_payloads(fx: Fixture) -> dict[str | int, Any]:
    return {
        TYP_KEY_TOKEN: _token_claims(fx),
        TYP_REVOCATION_LIST: cbor2.loads(
            cose.parse_sign1(
                fx.revocation_delta,
                typ=TYP_REVOCATION_LIST,
                max_size=1 << 18,
                error=InvalidRevocationList,
            ).payload
        ),
        TYP_TRUST_UPDATE: cbor2.loads(
            cose.parse_sign1(
                fx.trust_update, typ=TYP_TRUST_UPDATE, max_size=1 << 14, error=InvalidTrustUpdate
            ).payload
        ),
        TYP_SIGNED_TIME: {1: NONCE, 2: NOW + 5},
    }


@FUZZ
@given(typ=TYPS, data=st.data())
def test_near_valid_payloads_in_a_signed_envelope(
    fx: Fixture, typ: str | int, data: st.DataObject
) -> None:
    value = data.draw(tree_mutated(_near_valid_payloads(fx)[typ]))
    signer = fx.world.root if typ == TYP_TRUST_UPDATE else fx.world.issuer
    _run_all(fx, typ, _signed(cbor2.dumps(value), typ, signer))


@FUZZ
@given(
    typ=TYPS,
    protected=cbor_values | st.builds(lambda v: cbor2.dumps(v), cbor_values),
    header=st.dictionaries(cbor_keys, cbor_values, max_size=4),
    unprotected=cbor_values,
    payload=cbor_values,
    signature=cbor_values | st.binary(min_size=64, max_size=64),
)
def test_any_cbor_in_the_envelope_fields(
    fx: Fixture,
    typ: str | int,
    protected: Any,
    header: dict[Any, Any],
    unprotected: Any,
    payload: Any,
    signature: Any,
) -> None:
    _run_all(fx, typ, envelope(protected, unprotected, payload, signature))
    # And a well-formed envelope whose protected header map is arbitrary.
    _run_all(fx, typ, envelope(cbor2.dumps(header), {}, b"\xa0", b"\x00" * 64))


@FEW
@given(value=cbor_values | st.lists(cbor_values, min_size=4, max_size=4))
@example(value=[10**400, 1.0, BOOT, False])  # a bignum time: too big for a float
@example(value=[1.0, -(10**400), BOOT, False])
@example(value=[math.inf, 1.0, BOOT, False])
@example(value=[math.nan, 1.0, BOOT, False])
@example(value=[True, 1.0, BOOT, False])
def test_any_cbor_clock_state_is_restored_or_refused(fx: Fixture, value: Any) -> None:
    result = run_only(fx.decoders["TrustedClock.restore"], cbor2.dumps(value))
    if result is not _REFUSED:
        assert isinstance(result, TrustedClock)
        assert math.isfinite(result.now(300.0))


def test_claim_keys_must_be_integers_not_equal_floats_or_booleans(fx: Fixture) -> None:
    # CBOR 3.0 and true are other data items than 3 and 1: a strict reader sees no aud / no kty.
    # Accepting them would let two implementations read one signed token two ways.
    claims = _token_claims(fx)
    float_key = dict(claims)
    float_key[3.0] = float_key.pop(3)
    bool_key = dict(claims)
    cnf_key = dict(bool_key[8][1])
    cnf_key[True] = cnf_key.pop(1)
    bool_key[8] = {1: cnf_key}
    for claims_variant in (float_key, bool_key):
        doc = _signed(cbor2.dumps(claims_variant), TYP_KEY_TOKEN, fx.world.issuer)
        assert run_only(fx.decoders["verify"], doc) is _REFUSED


# ---------------------------------------------------------------------------------------------
# Roundtrips


@st.composite
def schedules(draw: st.DrawFn) -> WeeklySchedule:
    windows = []
    for _ in range(draw(st.integers(1, 16))):
        start = draw(st.integers(0, 1439))
        end = draw(st.integers(start + 1, 1440))
        windows.append(Window(draw(st.integers(1, 0b1111111)), start, end))
    return WeeklySchedule(draw(st.integers(-840, 840)), tuple(windows))


@st.composite
def token_requests(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(list(Role)))
    allowed = sorted(ROLE_ENTITLEMENTS[role])
    entitlements = frozenset(draw(st.lists(st.sampled_from(allowed), min_size=1, unique=True)))
    iat = draw(st.integers(NOW - 29 * DAY, NOW + 200 * DAY))
    nbf = draw(st.integers(iat - DAY // 2, iat + DAY // 2))
    # Issued before it expires (iat raises the car's clock, so it may not lie beyond the life).
    # a role's lifetime runs from the earlier of iat and nbf (a retired key outlives it)
    longest = ROLE_MAX_LIFETIME[role] - max(0, nbf - iat)
    expires = nbf + draw(st.integers(max(1, iat - nbf + 1), longest))
    return {
        "role": role,
        "entitlements": entitlements,
        "now": iat,
        "not_before": nbf,
        "expires": expires,
        "schedule": draw(st.none() | schedules()),
        "token_id": draw(st.binary(min_size=16, max_size=16)),
    }


@FEW
@given(req=token_requests(), data=st.data())
def test_issue_then_verify_returns_the_claims_given(
    fx: Fixture, req: dict[str, Any], data: st.DataObject
) -> None:
    w = fx.world
    token = issue(signer=w.issuer, vin=VIN, holder=w.phone.public_key, **req)
    at = data.draw(st.integers(req["not_before"], req["expires"] - 1))
    action = data.draw(st.sampled_from(sorted(req["entitlements"])))
    schedule: WeeklySchedule | None = req["schedule"]
    if schedule is not None and not schedule.allows(at):
        with pytest.raises(InvalidToken) as caught:
            verify(token, vin=VIN, action=action, now=at, trust=w.trust, revocations=w.revocations)
        assert caught.value.reason is Reason.OUTSIDE_SCHEDULE
        return
    grant = verify(token, vin=VIN, action=action, now=at, trust=w.trust, revocations=w.revocations)
    claims = grant.token
    assert claims.token_id == req["token_id"]
    assert claims.vin == VIN
    assert claims.holder == point_bytes(w.phone.public_key)
    assert claims.role is req["role"]
    assert claims.entitlements == req["entitlements"]
    assert claims.not_before == req["not_before"]
    assert claims.expires == req["expires"]
    assert claims.issued_at == req["now"]
    assert claims.schedule == schedule
    assert claims.kid == w.issuer.kid
    assert grant.action is action
    # An action outside the grant is refused.
    for other in set(Action) - req["entitlements"]:
        with pytest.raises(InvalidToken) as caught:
            verify(token, vin=VIN, action=other, now=at, trust=w.trust, revocations=w.revocations)
        assert caught.value.reason in (Reason.NOT_ENTITLED, Reason.OUTSIDE_SCHEDULE)


def reference_allows(schedule: WeeklySchedule, now: float) -> bool:
    """Straightforward reference: local wall time from datetime, Monday = bit 0."""
    zone = timezone(timedelta(minutes=schedule.utc_offset))
    local = datetime.fromtimestamp(math.floor(now), tz=UTC).astimezone(zone)
    minute = local.hour * 60 + local.minute
    return any(
        w.days >> local.weekday() & 1 and w.start <= minute < w.end for w in schedule.windows
    )


@settings(max_examples=300, deadline=None)
@given(
    schedule=schedules(),
    now=st.integers(0, 2**37) | st.floats(min_value=0, max_value=2**37),
)
@example(schedule=WeeklySchedule(0, (Window(0b0001000, 0, 1),)), now=0)  # Thursday 00:00
@example(schedule=WeeklySchedule(-840, (Window(0b0000100, 1439, 1440),)), now=0)
@example(schedule=WeeklySchedule(840, (Window(0b1000000, 0, 1440),)), now=NOW + 2 * DAY)
def test_schedule_agrees_with_a_datetime_reference(schedule: WeeklySchedule, now: float) -> None:
    assert schedule.allows(now) == reference_allows(schedule, now)


Entry = RevokedToken | RevokedHolder
History = tuple[list[Entry], list[tuple[int, int]]]


@st.composite
def revocation_histories(draw: st.DrawFn) -> History:
    """Entries in revocation order (some already dead at NOW) and the car's syncs.

    Each sync is (ledger sequence reached, a pick for the delta base at or behind the car's).
    """
    ids = st.binary(min_size=16, max_size=16) | st.sampled_from([b"\x01" * 16, b"\x02" * 16])
    ends = st.integers(NOW - 2 * DAY, NOW + 40 * DAY)
    entry = st.builds(RevokedToken, ids, ends) | st.builds(
        RevokedHolder, ids, st.integers(NOW - 40 * DAY, NOW + DAY), ends
    )
    entries = draw(st.lists(entry, min_size=1, max_size=25))
    points = draw(st.lists(st.integers(1, len(entries)), max_size=6, unique=True))
    points = sorted({*points, len(entries)})
    return entries, [(point, draw(st.integers(0, 2**16))) for point in points]


_DEAD_THEN_LIVE: History = (
    [
        RevokedHolder(b"\x01" * 16, before=NOW - 10 * DAY, until=NOW - 1),  # dead at NOW
        RevokedHolder(b"\x01" * 16, before=NOW - 40 * DAY, until=NOW + DAY),
    ],
    [(1, 0), (2, 1)],
)


@FEW
@given(history=revocation_histories())
@example(history=_DEAD_THEN_LIVE)
def test_any_sequence_of_deltas_equals_the_full_list(fx: Fixture, history: History) -> None:
    w = fx.world
    entries, syncs = history
    ledger = RevocationLedger(VIN)
    car = RevocationState(VIN)
    done = 0
    for point, pick in syncs:
        for entry in entries[done:point]:
            if isinstance(entry, RevokedToken):
                ledger.revoke_token(entry.token_id, entry.expires)
            else:
                ledger.revoke_holder(entry.holder_id, before=entry.before, until=entry.until)
        done = point
        # A delta from anywhere at or behind what the car holds (0 = a full list).
        since = pick % (car.sequence + 1)
        car = car.apply(ledger.document(w.issuer, now=NOW, since=since), trust=w.trust, now=NOW)
        assert car.sequence == point
    full = RevocationState(VIN).apply(ledger.document(w.issuer, now=NOW), trust=w.trust, now=NOW)
    assert _revocation_view(car) == _revocation_view(full)
    # And the state is exactly the entries still alive at NOW, merged: an entry past its end
    # ("pruned at expiry") has no effect, whichever way the car learned of it.
    live_tokens: dict[bytes, int] = {}
    live_holders: dict[bytes, tuple[int, int]] = {}
    for entry in entries:
        if isinstance(entry, RevokedToken) and entry.expires >= NOW:
            live_tokens[entry.token_id] = max(entry.expires, live_tokens.get(entry.token_id, 0))
        elif isinstance(entry, RevokedHolder) and entry.until >= NOW:
            old = live_holders.get(entry.holder_id, (0, 0))
            live_holders[entry.holder_id] = (max(entry.before, old[0]), max(entry.until, old[1]))
    assert dict(full.tokens) == live_tokens
    assert dict(full.holders) == live_holders


@FEW
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["elapse", "raise", "signed", "persist"]),
            st.integers(0, 10**6),
        ),
        max_size=20,
    )
)
def test_trusted_clock_only_moves_forward(fx: Fixture, steps: list[tuple[str, int]]) -> None:
    w = fx.world
    mono = 1_000.0
    clock = TrustedClock.provisioned(now=NOW, mono=mono, boot_id=BOOT)
    seen = clock.now(mono)
    for step, (op, amount) in enumerate(steps):
        if op == "elapse":
            mono += amount / 1000
        elif op == "raise":
            clock = clock.raised(NOW - 500_000 + amount, mono=mono, fresh=False)
        elif op == "signed":
            answer = sign_time(w.issuer, nonce=NONCE, now=NOW - 500_000 + amount)
            clock = clock.accept_signed_time(answer, nonce=NONCE, mono=mono, trust=w.trust)
            assert not clock.reset
        else:  # persist and restore, maybe after a reboot (monotonic clock restarts)
            state = clock.encode(mono)
            if amount % 2:
                mono = float(amount % 1000)
                clock = TrustedClock.restore(state, mono=mono, boot_id=f"reboot-{step}")
                assert clock.reset
            else:
                clock = TrustedClock.restore(state, mono=mono, boot_id=clock.boot_id)
        assert clock.now(mono) >= seen
        seen = clock.now(mono)
