"""``phonekey demo``: the most complete demonstration the project has at this stage.

In one process and with no network: provision a vehicle, issue an owner key and a time-limited
guest key, unlock offline, then show a revoked key, an expired key, a wrong-vehicle key and a
replayed proof denied with their reason codes. Exits 0 only if every decision is the expected one.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field
from typing import TextIO

from keycore import (
    Action,
    ChallengeBook,
    IssuerKeyRing,
    Reason,
    RevocationLedger,
    RevocationState,
    Role,
    SoftwareSigner,
    TrustedClock,
    TrustStore,
    UnlockDecision,
    UnlockRequest,
    WeeklySchedule,
    Window,
    decide,
    holder_id,
    issue,
    prove,
)
from keycore.cose import point_bytes

HOUR = 3600
DAY = 86_400
# Monday 2027-03-01 09:00 UTC: a weekday morning, inside the guest's schedule window.
START = 1_804_496_400


@dataclass
class Car:
    """The car's offline state: everything it decides with, and its monotonic clock."""

    vin: str
    trust: TrustStore
    revocations: RevocationState
    clock: TrustedClock
    challenges: ChallengeBook = field(default_factory=ChallengeBook)
    mono: float = 0.0

    def challenge(self) -> bytes:
        return self.challenges.issue(mono=self.mono)

    def decide(self, request: UnlockRequest) -> UnlockDecision:
        decision = decide(
            request,
            vin=self.vin,
            trust=self.trust,
            revocations=self.revocations,
            clock=self.clock,
            challenges=self.challenges,
            mono=self.mono,
        )
        if decision.grant is not None:  # a verified iat is a signed lower bound on the time
            self.clock = self.clock.raised(
                decision.grant.token.issued_at, mono=self.mono, fresh=False
            )
        return decision

    def wait(self, seconds: float) -> None:
        self.mono += seconds


@dataclass
class Phone:
    name: str
    device: SoftwareSigner = field(default_factory=SoftwareSigner.generate)

    def request(self, car: Car, token: bytes, action: Action = Action.UNLOCK) -> UnlockRequest:
        challenge = car.challenge()
        proof = prove(self.device, challenge=challenge, vin=car.vin, action=action, token=token)
        return UnlockRequest(token, action, challenge, proof)


class Demo:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failures = 0

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def expect(self, what: str, decision: UnlockDecision, expected: Reason | None) -> None:
        ok = decision.reason == expected
        self.failures += not ok
        verdict = "ALLOW" if decision.allowed else "DENY "
        mark = "ok" if ok else f"UNEXPECTED (wanted {expected or 'granted'})"
        action = decision.action.name.lower() if decision.action is not None else "?"
        self.say(f"  {verdict} {action:11s} {what:44s} {decision.code:17s} {mark}")


def run(out: TextIO = sys.stdout) -> int:
    demo = Demo(out)
    demo.say("phonekey demo — keycore, one process, no network\n")

    # Cloud side: the root of trust, the issuer's key ring, the vehicle's revocation ledger.
    root = SoftwareSigner.generate()
    ring = IssuerKeyRing.create(now=START - DAY)
    issuer = ring.active.signer
    vin = "5YJ3E1EA7KF" + "".join(secrets.choice("0123456789") for _ in range(6))
    ledger = RevocationLedger(vin)

    # The previous owner's phone key was revoked at the hand-over, before this car was set up.
    previous_owner = Phone("previous owner")
    ledger.revoke_holder(
        holder_id(point_bytes(previous_owner.device.public_key)),
        before=START,
        until=START + 30 * DAY,
    )
    previous_token = issue(
        signer=issuer,
        vin=vin,
        holder=previous_owner.device.public_key,
        role=Role.OWNER,
        now=START - DAY,
        expires=START + 6 * DAY,
    )

    # Provisioning: root key, root-signed issuer keys, trusted time and the full revocation list.
    trust = TrustStore(root.public_key).apply(ring.trust_update(root, sequence=1, now=START))
    car = Car(
        vin,
        trust,
        RevocationState(vin).apply(ledger.document(issuer, now=START), trust=trust, now=START),
        TrustedClock.provisioned(now=START, mono=0.0, boot_id="boot-1"),
    )
    demo.say(
        f"provisioned vehicle {vin}: issuer key {issuer.kid.hex()}, trust sequence 1,"
        f" revocation list sequence {car.revocations.sequence}"
    )

    owner, friend, thief = Phone("owner"), Phone("friend"), Phone("thief")
    owner_token = issue(
        signer=issuer,
        vin=vin,
        holder=owner.device.public_key,
        role=Role.OWNER,
        now=START,
        expires=START + 7 * DAY,
    )
    guest_token_id = secrets.token_bytes(16)
    weekdays_9_to_18 = WeeklySchedule(0, (Window(0b0011111, 9 * 60, 18 * 60),))
    guest_token = issue(
        signer=issuer,
        vin=vin,
        holder=friend.device.public_key,
        role=Role.GUEST,
        now=START,
        expires=START + 2 * DAY,
        schedule=weekdays_9_to_18,
        token_id=guest_token_id,
    )
    demo.say(
        f"issued owner key ({len(owner_token)} B, 7 days) and guest key "
        f"({len(guest_token)} B, 2 days, weekdays 09:00–18:00 UTC)\n"
    )

    demo.say("offline unlocks (the car has no network; every decision uses local state only):")
    demo.expect("owner, own phone", car.decide(owner.request(car, owner_token)), None)
    demo.expect("guest, inside schedule", car.decide(friend.request(car, guest_token)), None)
    demo.expect(
        "guest may not manage keys",
        car.decide(friend.request(car, guest_token, Action.MANAGE_KEYS)),
        Reason.NOT_ENTITLED,
    )
    demo.expect(
        "owner token, thief's phone (no device key)",
        car.decide(thief.request(car, owner_token)),
        Reason.BAD_PROOF,
    )

    demo.expect(
        "previous owner's key (holder revoked)",
        car.decide(previous_owner.request(car, previous_token)),
        Reason.REVOKED,
    )

    replayed = owner.request(car, owner_token, Action.START)
    demo.expect("owner starts the car", car.decide(replayed), None)
    demo.expect("the same answer replayed", car.decide(replayed), Reason.REPLAYED)

    other_vin = "1HGCM82633A004352"
    foreign = issue(
        signer=issuer,
        vin=other_vin,
        holder=friend.device.public_key,
        role=Role.DRIVER,
        now=START,
        expires=START + DAY,
    )
    demo.expect(
        f"key for another car ({other_vin})",
        car.decide(friend.request(car, foreign)),
        Reason.WRONG_VEHICLE,
    )

    car.wait(10 * HOUR)  # 19:00: outside the guest's window
    demo.expect(
        "guest at 19:00, outside schedule",
        car.decide(friend.request(car, guest_token)),
        Reason.OUTSIDE_SCHEDULE,
    )

    demo.say("\nthe owner revokes the guest key; a phone carries the signed delta to the car:")
    ledger.revoke_token(guest_token_id, START + 2 * DAY)
    delta = ledger.document(issuer, now=START + 10 * HOUR, since=car.revocations.sequence)
    car.revocations = car.revocations.apply(delta, trust=car.trust, now=car.clock.now(car.mono))
    demo.say(
        f"  delta {len(delta)} B: revocation list now at sequence {car.revocations.sequence},"
        f" {len(car.revocations)} entries"
    )
    car.wait(14 * HOUR)  # next morning, 09:00, inside the window again
    demo.expect(
        "guest key after revocation", car.decide(friend.request(car, guest_token)), Reason.REVOKED
    )
    demo.expect("owner still fine", car.decide(owner.request(car, owner_token)), None)

    car.wait(7 * DAY)
    demo.expect(
        "owner key after 8 days (7-day token)",
        car.decide(owner.request(car, owner_token)),
        Reason.EXPIRED,
    )

    demo.say("")
    if demo.failures:
        demo.say(f"FAILED: {demo.failures} decision(s) were not what they should be")
        return 1
    demo.say("every decision was the expected one")
    return 0
