"""decide(): challenge, token and proof with local state only; ChallengeBook; issue() policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from keycore import (
    ROLE_ENTITLEMENTS,
    ROLE_MAX_LIFETIME,
    Action,
    ChallengeBook,
    InvalidProof,
    IssueError,
    Reason,
    RevocationLedger,
    RevocationState,
    Role,
    SoftwareSigner,
    TrustedClock,
    UnlockDecision,
    UnlockRequest,
    decide,
    prove,
    sign_time,
    verify_proof,
)
from keycore.cose import parse_sign1
from keycore.errors import InvalidToken
from keycore.proof import CHALLENGE_BYTES
from keycore.token import MAX_TIME, TYP_KEY_TOKEN, decode_claims
from tests.conftest import DAY, NOW, OTHER_VIN, VIN, World

BOOT = "boot-a"
TTL = 30.0


@dataclass
class Car:
    """One car's local state, deciding requests at monotonic time ``mono``."""

    world: World
    clock: TrustedClock
    revocations: RevocationState
    challenges: ChallengeBook = field(default_factory=lambda: ChallengeBook(ttl=TTL))
    mono: float = 1_000.0

    def request(
        self,
        token: bytes,
        action: Action = Action.UNLOCK,
        *,
        phone: SoftwareSigner | None = None,
        proof_vin: str = VIN,
        proof_action: Action | None = None,
        proof_token: bytes | None = None,
    ) -> UnlockRequest:
        challenge = self.challenges.issue(mono=self.mono)
        proof = prove(
            phone or self.world.phone,
            challenge=challenge,
            vin=proof_vin,
            action=action if proof_action is None else proof_action,
            token=token if proof_token is None else proof_token,
        )
        return UnlockRequest(token, action, challenge, proof)

    def decide(self, request: UnlockRequest, *, after: float = 1.0) -> UnlockDecision:
        self.mono += after
        return decide(
            request,
            vin=VIN,
            trust=self.world.trust,
            revocations=self.revocations,
            clock=self.clock,
            challenges=self.challenges,
            mono=self.mono,
        )

    def reboot(self) -> None:
        """Power cycle: the monotonic clock restarts under a new boot id, a clock reset."""
        saved = self.clock.encode(self.mono)
        self.mono = 5.0
        self.challenges = ChallengeBook(ttl=TTL)
        self.clock = TrustedClock.restore(saved, mono=self.mono, boot_id="boot-b")


@pytest.fixture
def car(world: World) -> Car:
    clock = TrustedClock.provisioned(now=NOW + 60, mono=1_000.0, boot_id=BOOT)
    return Car(world, clock, world.revocations)


def denied(decision: UnlockDecision) -> str:
    assert not decision.allowed
    assert decision.grant is None
    assert decision.reason is not None
    assert decision.code == decision.reason.value
    return decision.code


# ---------------------------------------------------------------------------------------------
# Granted


def test_valid_request_is_granted(car: Car, world: World) -> None:
    token = world.token(token_id=b"\x11" * 16)
    decision = car.decide(car.request(token, Action.START))
    assert decision.allowed
    assert decision.code == "granted"
    assert decision.reason is None
    assert decision.action is Action.START
    assert decision.at == NOW + 61
    assert decision.grant is not None
    assert decision.grant.action is Action.START
    assert decision.grant.token.token_id == b"\x11" * 16
    assert decision.grant.token.role is Role.OWNER
    assert decision.grant.holder_key.public_numbers() == world.phone.public_key.public_numbers()


def test_action_may_be_given_as_its_integer(car: Car, world: World) -> None:
    token = world.token()
    request = car.request(token, Action.LOCK)
    decision = car.decide(replace(request, action=int(Action.LOCK)))  # type: ignore[arg-type]
    assert decision.allowed
    assert decision.action is Action.LOCK


# ---------------------------------------------------------------------------------------------
# Challenges


def test_challenge_is_single_use(car: Car, world: World) -> None:
    request = car.request(world.token())
    assert car.decide(request).allowed
    assert denied(car.decide(request)) == "replayed"


def test_refused_answer_cannot_be_retried_on_the_same_challenge(car: Car, world: World) -> None:
    token = world.token()
    bad = car.request(token, phone=SoftwareSigner.generate())
    assert denied(car.decide(bad)) == "bad_proof"
    good_proof = prove(
        world.phone, challenge=bad.challenge, vin=VIN, action=bad.action, token=token
    )
    assert denied(car.decide(replace(bad, proof=good_proof))) == "replayed"


def test_challenge_too_old(car: Car, world: World) -> None:
    request = car.request(world.token())
    assert denied(car.decide(request, after=TTL + 0.5)) == "challenge_expired"
    # Answered at exactly the TTL it is still fresh.
    assert car.decide(car.request(world.token()), after=TTL).allowed


def test_challenge_from_the_future_is_expired(car: Car, world: World) -> None:
    request = car.request(world.token())
    assert denied(car.decide(request, after=-1.0)) == "challenge_expired"


def test_unknown_challenge(car: Car, world: World) -> None:
    request = car.request(world.token())
    forged = replace(request, challenge=bytes(CHALLENGE_BYTES))
    assert denied(car.decide(forged)) == "replayed"
    # Challenges from another car (another book) are unknown here.
    other = ChallengeBook()
    foreign = other.issue(mono=car.mono)
    proof = prove(
        world.phone, challenge=foreign, vin=VIN, action=Action.UNLOCK, token=request.token
    )
    assert denied(car.decide(UnlockRequest(request.token, Action.UNLOCK, foreign, proof))) == (
        "replayed"
    )


# ---------------------------------------------------------------------------------------------
# Proof of possession


def test_proof_from_another_phone(car: Car, world: World) -> None:
    thief = SoftwareSigner.generate()
    assert denied(car.decide(car.request(world.token(), phone=thief))) == "bad_proof"


def test_proof_is_bound_to_the_action(car: Car, world: World) -> None:
    request = car.request(world.token(), Action.START, proof_action=Action.UNLOCK)
    assert denied(car.decide(request)) == "bad_proof"


def test_proof_is_bound_to_the_vin(car: Car, world: World) -> None:
    request = car.request(world.token(), proof_vin=OTHER_VIN)
    assert denied(car.decide(request)) == "bad_proof"


def test_proof_is_bound_to_the_token(car: Car, world: World) -> None:
    mine, also_mine = world.token(), world.token()
    assert denied(car.decide(car.request(mine, proof_token=also_mine))) == "bad_proof"


def test_proof_is_bound_to_the_challenge(car: Car, world: World) -> None:
    token = world.token()
    first, second = car.request(token), car.request(token)
    assert denied(car.decide(replace(second, proof=first.proof))) == "bad_proof"


def test_verify_proof_directly(world: World) -> None:
    token = world.token()
    challenge = bytes(range(32))
    proof = prove(world.phone, challenge=challenge, vin=VIN, action=Action.TRUNK, token=token)
    args = {
        "holder": world.phone.public_key,
        "challenge": challenge,
        "vin": VIN,
        "action": Action.TRUNK,
        "token": token,
    }
    verify_proof(proof, **args)  # type: ignore[arg-type]
    cases: list[tuple[object, dict[str, object], Reason]] = [
        (proof[:-1], {}, Reason.MALFORMED),
        (proof + b"\x00", {}, Reason.MALFORMED),
        (bytearray(proof), {}, Reason.MALFORMED),
        (proof.hex(), {}, Reason.MALFORMED),
        (proof, {"challenge": challenge[:31]}, Reason.MALFORMED),
        (proof, {"holder": SoftwareSigner.generate().public_key}, Reason.BAD_PROOF),
        (proof, {"action": Action.CLIMATE}, Reason.BAD_PROOF),
        (proof, {"token": token + b"\x00"}, Reason.BAD_PROOF),
        (bytes(64), {}, Reason.BAD_PROOF),
    ]
    for candidate, overrides, reason in cases:
        with pytest.raises(InvalidProof) as caught:
            verify_proof(candidate, **{**args, **overrides})  # type: ignore[arg-type]
        assert caught.value.reason is reason


# ---------------------------------------------------------------------------------------------
# Token checks reach the decision


def test_token_refusals_become_reasons(car: Car, world: World) -> None:
    assert denied(car.decide(car.request(world.token(vin=OTHER_VIN)))) == "wrong_vehicle"
    guest = world.token(Role.GUEST)
    assert denied(car.decide(car.request(guest, Action.MANAGE_KEYS))) == "not_entitled"
    stranger = world.token(signer=SoftwareSigner.generate())
    assert denied(car.decide(car.request(stranger))) == "unknown_key"
    expired = world.token(not_before=NOW - DAY, now=NOW - DAY, expires=NOW)
    assert denied(car.decide(car.request(expired))) == "expired"


def test_revoked_token_is_denied(car: Car, world: World) -> None:
    token = world.token(token_id=b"\x42" * 16)
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(b"\x42" * 16, NOW + DAY)
    car.revocations = car.revocations.apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    decision = car.decide(car.request(token))
    assert denied(decision) == "revoked"
    # The authenticated claims travel with the refusal, for the audit trail.
    assert decision.token is not None
    assert decision.token.token_id == b"\x42" * 16


def test_without_the_phones_key_nothing_about_the_token_is_revealed(car: Car, world: World) -> None:
    # A copied token presented without the phone's key only ever hears bad_proof, not whether
    # the token is revoked, expired, for another car or outside its rights.
    thief = SoftwareSigner.generate()
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(b"\x43" * 16, NOW + DAY)
    car.revocations = car.revocations.apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    copied = [
        world.token(token_id=b"\x43" * 16),  # revoked
        world.token(not_before=NOW - DAY, now=NOW - DAY, expires=NOW),  # expired
        world.token(vin=OTHER_VIN),  # another car
    ]
    for token in copied:
        assert denied(car.decide(car.request(token, phone=thief))) == "bad_proof"
    guest = world.token(Role.GUEST)
    assert denied(car.decide(car.request(guest, Action.MANAGE_KEYS, phone=thief))) == "bad_proof"


def test_a_car_with_another_cars_revocation_state_is_misconfigured(car: Car, world: World) -> None:
    car.revocations = RevocationState(OTHER_VIN)
    with pytest.raises(ValueError, match="another vehicle"):
        car.decide(car.request(world.token()))


def test_trusted_time_is_at_least_the_tokens_iat(car: Car, world: World) -> None:
    # A token issued "in the future" of the car's clock proves time has passed that far.
    token = world.token(now=NOW + 3600, expires=NOW + DAY)
    decision = car.decide(car.request(token))
    assert decision.allowed
    assert decision.at == NOW + 3600


# ---------------------------------------------------------------------------------------------
# Clock resets


@pytest.mark.parametrize("role", [Role.GUEST, Role.DRIVER, Role.VALET, Role.SERVICE])
def test_after_a_clock_reset_only_owner_keys_work_until_fresh_time(
    car: Car, world: World, role: Role
) -> None:
    car.reboot()
    assert car.clock.reset
    guest = world.token(role)
    owner = world.token(Role.OWNER)
    assert denied(car.decide(car.request(guest))) == "untrusted_time"
    granted = car.decide(car.request(owner))
    assert granted.allowed
    assert granted.grant is not None

    # The caller raises its clock with the owner token's iat: not fresh, the reset stays.
    car.clock = car.clock.raised(granted.grant.token.issued_at, mono=car.mono, fresh=False)
    assert car.clock.reset
    assert denied(car.decide(car.request(guest))) == "untrusted_time"

    # Fresh signed time for the car's own nonce, carried by a phone, clears it.
    nonce = b"\x07" * 32
    answer = sign_time(world.issuer, nonce=nonce, now=NOW + 120)
    car.clock = car.clock.accept_signed_time(answer, nonce=nonce, mono=car.mono, trust=world.trust)
    assert not car.clock.reset
    assert car.decide(car.request(guest)).allowed


def test_untrusted_time_is_never_granted_even_with_a_good_proof(car: Car, world: World) -> None:
    car.clock = TrustedClock.unknown(mono=car.mono, boot_id=BOOT)
    guest = world.token(Role.GUEST, token_id=b"\x24" * 16)
    decision = car.decide(car.request(guest))
    assert denied(decision) == "untrusted_time"
    assert decision.token is not None
    assert decision.token.token_id == b"\x24" * 16
    assert decision.at == NOW  # the token's iat is the best lower bound the car has


# ---------------------------------------------------------------------------------------------
# Garbage never raises


GARBAGE: list[object] = [
    None,
    7,  # an integer that is no action
    -1,
    2**200,
    1.5,
    float("nan"),
    "text",
    "",
    [],
    [1, 2],
    {},
    {"a": 1},
    object(),
    b"",
    b"\x00",
]


@pytest.mark.parametrize("field_name", ["token", "action", "challenge", "proof"])
@pytest.mark.parametrize("value", GARBAGE, ids=lambda v: type(v).__name__)
def test_decide_never_raises_for_garbage_fields(
    car: Car, world: World, field_name: str, value: object
) -> None:
    request = car.request(world.token())
    decision = car.decide(replace(request, **{field_name: value}))
    assert isinstance(decision, UnlockDecision)
    assert denied(decision) in {r.value for r in Reason}
    if field_name == "action":
        assert decision.action is None  # the request named no known action
    else:
        assert decision.action is Action.UNLOCK


@pytest.mark.parametrize("field_name", ["token", "challenge", "proof"])
def test_decide_refuses_bytearray_and_memoryview(car: Car, world: World, field_name: str) -> None:
    for wrap in (bytearray, memoryview):
        request = car.request(world.token())
        value = wrap(getattr(request, field_name))
        assert denied(car.decide(replace(request, **{field_name: value}))) == "malformed"


def test_decide_refuses_huge_inputs(car: Car, world: World) -> None:
    huge = b"\xd2\x84" + b"\x00" * 10_000_000
    request = car.request(world.token())
    assert denied(car.decide(replace(request, token=huge))) == "too_large"
    request = car.request(world.token())
    assert denied(car.decide(replace(request, challenge=huge))) == "replayed"
    request = car.request(world.token())
    assert denied(car.decide(replace(request, proof=huge))) == "malformed"
    request = car.request(world.token())
    assert denied(car.decide(replace(request, action=10**100))) == "malformed"  # type: ignore[arg-type]


def test_garbage_does_not_poison_later_requests(car: Car, world: World) -> None:
    for value in GARBAGE:
        car.decide(UnlockRequest(value, value, value, value))  # type: ignore[arg-type]
    assert car.decide(car.request(world.token())).allowed


# ---------------------------------------------------------------------------------------------
# ChallengeBook


def counter_bytes() -> Callable[[int], bytes]:
    state = {"n": 0}

    def next_bytes(n: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(n, "big")

    return next_bytes


def test_challenge_book_evicts_the_oldest_when_full() -> None:
    book = ChallengeBook(capacity=3, random_bytes=counter_bytes())
    issued = [book.issue(mono=float(i)) for i in range(5)]
    assert len(book) == 3
    for forgotten in issued[:2]:
        with pytest.raises(InvalidProof) as caught:
            book.consume(forgotten, mono=5.0)
        assert caught.value.reason is Reason.REPLAYED
    for kept in issued[2:]:
        book.consume(kept, mono=5.0)
    assert len(book) == 0


def test_challenge_book_challenges_are_random_and_32_bytes() -> None:
    book = ChallengeBook()
    challenges = {book.issue(mono=0.0) for _ in range(10)}
    assert len(challenges) == 10
    assert all(len(c) == CHALLENGE_BYTES for c in challenges)


def test_challenge_book_ttl_boundaries() -> None:
    book = ChallengeBook(ttl=10.0, random_bytes=counter_bytes())
    at_issue, at_ttl, past_ttl = (book.issue(mono=100.0) for _ in range(3))
    book.consume(at_issue, mono=100.0)
    book.consume(at_ttl, mono=110.0)
    with pytest.raises(InvalidProof) as caught:
        book.consume(past_ttl, mono=110.001)
    assert caught.value.reason is Reason.CHALLENGE_EXPIRED
    # An expired challenge is spent too.
    with pytest.raises(InvalidProof) as caught:
        book.consume(past_ttl, mono=100.0)
    assert caught.value.reason is Reason.REPLAYED


def test_challenge_book_rejects_bad_configuration() -> None:
    for kwargs in ({"ttl": 0.0}, {"ttl": -1.0}, {"capacity": 0}):
        with pytest.raises(ValueError, match="positive"):
            ChallengeBook(**kwargs)  # type: ignore[arg-type]
    short = ChallengeBook(random_bytes=lambda n: b"\x00" * (n - 1))
    with pytest.raises(ValueError, match="wrong length"):
        short.issue(mono=0.0)
    assert len(short) == 0


# ---------------------------------------------------------------------------------------------
# issue() policy


def issue_error(world: World, **kwargs: object) -> str:
    with pytest.raises(IssueError) as caught:
        world.token(**kwargs)
    assert caught.value.reason is Reason.POLICY
    return caught.value.detail


def test_guest_cannot_be_granted_manage_keys(world: World) -> None:
    for role in (Role.DRIVER, Role.GUEST, Role.VALET, Role.SERVICE):
        detail = issue_error(world, role=role, entitlements=frozenset({Action.MANAGE_KEYS}))
        assert "manage_keys" in detail
    assert "trunk" in issue_error(
        world, role=Role.VALET, entitlements=frozenset({Action.UNLOCK, Action.TRUNK})
    )
    world.token(Role.OWNER, entitlements=frozenset({Action.MANAGE_KEYS}))


def test_default_entitlements_are_the_roles(world: World) -> None:
    for role in Role:
        msg = parse_sign1(world.token(role), typ=TYP_KEY_TOKEN, max_size=1024, error=InvalidToken)
        assert decode_claims(msg.payload, msg.kid).entitlements == ROLE_ENTITLEMENTS[role]


def test_lifetime_is_capped_per_role(world: World) -> None:
    for role in Role:
        longest = ROLE_MAX_LIFETIME[role]
        world.token(role, expires=NOW + longest)
        issue_error(world, role=role, expires=NOW + longest + 1)
        # Measured from not_before, which may lie in the past.
        issue_error(world, role=role, not_before=NOW - 1, expires=NOW + longest)


def test_empty_or_out_of_range_window(world: World) -> None:
    issue_error(world, expires=NOW)
    issue_error(world, expires=NOW - 1)
    issue_error(world, not_before=NOW + 10, expires=NOW + 10)
    issue_error(world, not_before=-1, expires=10, now=0)
    issue_error(world, not_before=MAX_TIME - 10, expires=MAX_TIME + 1, now=MAX_TIME - 10)
    issue_error(world, now=-1)


def test_issued_at_must_lie_within_the_tokens_life(world: World) -> None:
    # A verified iat raises the car's clock, so verifiers refuse an iat at or after expiry;
    # issue() must not sign such a token in the first place.
    issue_error(world, now=NOW + DAY, not_before=NOW, expires=NOW + DAY)
    issue_error(world, now=NOW + 2 * DAY, not_before=NOW, expires=NOW + DAY)
    world.token(now=NOW + DAY - 1, not_before=NOW, expires=NOW + DAY)


def test_empty_entitlements_and_bad_token_id(world: World) -> None:
    issue_error(world, entitlements=frozenset())
    issue_error(world, token_id=b"\x00" * 15)
    issue_error(world, token_id=b"\x00" * 17)


def test_bad_vin_is_a_policy_error(world: World) -> None:
    for vin in (
        "5yj3e1ea7kf000001",  # lower case
        "5YJ3E1EA7KF00000I",  # I, O and Q are not VIN characters
        "5YJ3E1EA7KF00000O",
        "5YJ3E1EA7KF00000Q",
        "5YJ3E1EA7KF00000",  # 16 characters
        "5YJ3E1EA7KF0000011",  # 18 characters
        "",
    ):
        issue_error(world, vin=vin)
