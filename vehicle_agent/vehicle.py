"""The car's decisions and what it knows, with no network: keycore over the durable state.

``Vehicle`` decides every unlock from local state only (``CarState.decide``, the one decider the
BLE session uses too: keycore's decide with the car's trust store, revocation state, trusted clock
and challenges), writes each decision to the audit outbox, moves the actuator when allowed, and
learns only from signed documents that verify and are newer.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ble_fallback.protocol import CarState
from keycore import (
    ChallengeBook,
    InvalidRevocationList,
    InvalidTrustUpdate,
    Reason,
    RevocationState,
    TrustedClock,
    TrustStore,
    UnlockDecision,
    UnlockRequest,
)
from vehicle_agent.actuator import ACTUATED, Actuator, ActuatorError
from vehicle_agent.state import AgentState, Identity

TIME_NONCE_BYTES = 32


class DurableCarState(CarState):
    """The car's ``CarState`` (BLE sessions and ``Vehicle.decide`` decide with it), as a view
    of the ``Vehicle``'s objects.

    Reads give the Vehicle's current trust store, revocation state, clock and challenge book;
    the session's replacements (made only by keycore from verified, newer documents) go back
    through the Vehicle, which persists them — before the car's Result says "applied".
    """

    def __init__(self, vehicle: Vehicle) -> None:  # the dataclass __init__ would write through
        self.vin = vehicle.vin
        self._vehicle = vehicle

    @property
    def trust(self) -> TrustStore:
        return self._vehicle.trust

    @trust.setter
    def trust(self, value: TrustStore) -> None:
        if value is not self._vehicle.trust:
            self._vehicle.adopt_trust(value)

    @property
    def revocations(self) -> RevocationState:
        return self._vehicle.revocations

    @revocations.setter
    def revocations(self, value: RevocationState) -> None:
        if value is not self._vehicle.revocations:
            self._vehicle.adopt_revocations(value)

    @property
    def clock(self) -> TrustedClock:
        return self._vehicle.clock

    @clock.setter
    def clock(self, value: TrustedClock) -> None:
        self._vehicle.adopt_clock(value)

    @property
    def challenges(self) -> ChallengeBook:
        return self._vehicle.challenges

    @challenges.setter
    def challenges(self, value: ChallengeBook) -> None:
        self._vehicle.challenges = value


@dataclass
class Vehicle:
    state: AgentState
    identity: Identity
    trust: TrustStore
    revocations: RevocationState
    clock: TrustedClock
    actuator: Actuator
    mono: Callable[[], float] = time.monotonic
    challenges: ChallengeBook = field(default_factory=ChallengeBook)
    on_decision: Callable[[UnlockDecision], None] | None = None  # metrics hook
    _time_nonces: set[bytes] = field(default_factory=set)
    # the state every unlock is decided with, by the BLE session and by ``decide`` alike
    car: DurableCarState = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.car = DurableCarState(self)

    @classmethod
    def load(
        cls,
        state: AgentState,
        actuator: Actuator,
        *,
        boot_id: str,
        mono: Callable[[], float] = time.monotonic,
    ) -> Vehicle:
        identity = state.identity()
        now_mono = mono()
        clock = state.clock(mono=now_mono, boot_id=boot_id)
        if clock is None:
            clock = TrustedClock.unknown(mono=now_mono, boot_id=boot_id)
        vehicle = cls(
            state=state,
            identity=identity,
            trust=state.trust(identity.root),
            revocations=state.revocations(identity.vin),
            clock=clock,
            actuator=actuator,
            mono=mono,
        )
        state.save_clock(clock, mono=now_mono)  # a detected reset is remembered as such
        return vehicle

    @property
    def vin(self) -> str:
        return self.identity.vin

    def now(self) -> float:
        return self.clock.now(self.mono())

    def challenge(self) -> bytes:
        return self.challenges.issue(mono=self.mono())

    def decide(self, request: UnlockRequest) -> UnlockDecision:
        """Decide with local state only, as a BLE session does (``CarState.decide``: a grant
        raises the clock, persisted); every decision goes to the audit outbox."""
        decision = self.car.decide(request, mono=self.mono())
        self.record(decision, path="ble")
        return decision

    async def unlock(self, request: UnlockRequest) -> UnlockDecision:
        """Decide and, if allowed, move the car."""
        decision = self.decide(request)
        await self.actuate(decision)
        return decision

    def apply_revocations(self, document: bytes) -> bool:
        """Apply a signed list if it verifies and is newer; False if it is not newer."""
        try:
            revocations = self.revocations.apply(document, trust=self.trust, now=self.now())
        except InvalidRevocationList as error:
            if error.reason is Reason.STALE:
                return False
            raise
        self.adopt_revocations(revocations)
        return True

    def apply_trust_update(self, document: bytes) -> bool:
        try:
            trust = self.trust.apply(document)
        except InvalidTrustUpdate as error:
            if error.reason is Reason.STALE:
                return False
            raise
        self.adopt_trust(trust)
        return True

    def time_nonce(self) -> bytes:
        """A fresh nonce for a signed time answer (each usable once)."""
        nonce = secrets.token_bytes(TIME_NONCE_BYTES)
        self._time_nonces.add(nonce)
        return nonce

    def accept_time(self, answer: bytes, nonce: bytes) -> None:
        """Raise the clock with a signed answer to one of our own nonces; clears a reset."""
        if nonce not in self._time_nonces:
            raise ValueError("not a nonce this car issued (or already used)")
        self._time_nonces.discard(nonce)
        mono = self.mono()
        self.clock = self.clock.accept_signed_time(answer, nonce=nonce, mono=mono, trust=self.trust)
        self.state.save_clock(self.clock, mono=mono)

    # What another decider over this car's state (the BLE peripheral, vehicle_agent/ble.py)
    # reports back: keycore has already verified and ordered it; these persist and audit it.

    def record(self, decision: UnlockDecision, *, path: str) -> None:
        """Audit a decision taken over this car's state, and count it."""
        self.state.add_audit(_audit(decision, path=path))
        if self.on_decision is not None:
            self.on_decision(decision)

    async def actuate(self, decision: UnlockDecision) -> None:
        """Move the car if ``decision`` allows an actuation; a failure is audited.

        The time and the action are kept durably first: a remote command issued before it is
        superseded when it would undo it (the phone may have fallen back to BLE after the cloud
        queued that command; a queued unlock must not run after the user locked in person).
        """
        if decision.allowed and decision.action in ACTUATED:
            self.state.set_local_action_at(self.now(), _name(decision))
            try:
                await self.actuator.perform(decision.action)
            except ActuatorError as error:
                self.state.add_audit(
                    {"kind": "actuator_error", "action": _name(decision), "error": str(error)}
                )

    def adopt_revocations(self, revocations: RevocationState) -> None:
        """Enforce and persist a revocation state keycore produced from a verified list."""
        self.revocations = revocations
        self.state.save_revocations(revocations)
        self.state.add_audit({"kind": "revocations", "sequence": revocations.sequence})

    def adopt_trust(self, trust: TrustStore) -> None:
        """Use and persist a trust store keycore produced from a verified update."""
        self.trust = trust
        self.state.save_trust(trust)
        self.state.add_audit({"kind": "trust_update", "sequence": trust.sequence})

    def adopt_clock(self, clock: TrustedClock) -> None:
        """Keep a clock keycore raised; persisted only when it moved forward or left reset
        (every grant raises it to the token's iat, usually a no-op not worth an fsync)."""
        mono = self.mono()
        if clock.now(mono) <= self.clock.now(mono) and clock.reset == self.clock.reset:
            return
        self.clock = clock
        self.state.save_clock(clock, mono=mono)


def _name(decision: UnlockDecision) -> str:
    return decision.action.name.lower() if decision.action is not None else "?"


def _audit(decision: UnlockDecision, *, path: str) -> dict[str, object]:
    """An audit event: who, what, when and why — never a token, a signature or a key."""
    event: dict[str, object] = {
        "kind": "decision",
        "path": path,
        "action": _name(decision),
        "code": decision.code,
        "at": round(decision.at, 3),
    }
    if decision.token is not None:
        event["token_id"] = decision.token.token_id.hex()
        event["holder_id"] = decision.token.holder_id.hex()
        event["role"] = decision.token.role.name.lower()
    return event
