"""The two state machines without any I/O: messages in the wrong state, the deadline, couriers,
cached replies, and random input that never raises anything but a protocol error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ble_fallback.errors import BleReason, LocalProtocolError, RemoteProtocolError
from ble_fallback.framing import split_frame
from ble_fallback.messages import (
    Busy,
    Challenge,
    MessageType,
    Result,
    RevocationList,
    TimeAnswer,
    TrustUpdate,
    UnlockRequest,
    encode,
)
from ble_fallback.protocol import (
    NEED_DATA,
    BusyReceived,
    CarSession,
    ChallengeReceived,
    CourierHandled,
    PhoneSession,
    ReplyRepeated,
    RequestHandled,
    ResultReceived,
    SessionState,
)
from keycore import Action, Role, TrustedClock, prove, sign_time
from tests.ble_fallback.harness import (
    ALLOWED_LATENCY,
    car_state,
    connect,
    deliver,
    random_source,
    revocation_of,
)
from tests.conftest import DAY, NOW, VIN, World

Sendable = UnlockRequest | RevocationList | TrustUpdate | TimeAnswer


def request(world: World, phone: PhoneSession, token: bytes, action: Action) -> UnlockRequest:
    assert phone.challenge is not None
    proof = prove(world.phone, challenge=phone.challenge.nonce, vin=VIN, action=action, token=token)
    return UnlockRequest(token, action, proof)


def answer(car: CarSession, phone: PhoneSession, message: Sendable, now: float) -> Result:
    """Send ``message`` and return the car's Result (skipping the opening challenge's event)."""
    deliver(phone.send(message), car, now)
    deliver(car.data_to_send(), phone, now)
    while isinstance(event := phone.next_event(), ChallengeReceived):
        pass
    assert isinstance(event, ResultReceived)
    return event.result


def test_unlock_is_three_messages_and_the_car_tells_what_it_knows(world: World) -> None:
    state = car_state(world)
    car, phone = connect(state)
    event = phone.next_event()
    assert isinstance(event, ChallengeReceived)
    assert event.challenge.status.trusted_time == NOW
    assert event.challenge.status.trust_sequence == world.trust.sequence
    result = answer(car, phone, request(world, phone, world.token(), Action.UNLOCK), now=0.1)
    assert result.code == "granted"
    assert result.action is Action.UNLOCK
    handled = car.next_event()
    assert isinstance(handled, RequestHandled)
    assert handled.allowed
    assert car.next_event() is NEED_DATA
    assert phone.state is SessionState.READY
    assert car.state is SessionState.READY
    # The Result carries a fresh challenge: a second command on the same connection works.
    result = answer(car, phone, request(world, phone, world.token(), Action.LOCK), now=0.2)
    assert result.code == "granted"


def test_an_answer_after_the_allowed_latency_is_refused_late_and_nothing_is_decided(
    world: World,
) -> None:
    car, phone = connect(car_state(world))
    late = ALLOWED_LATENCY + 0.001
    result = answer(car, phone, request(world, phone, world.token(), Action.UNLOCK), now=late)
    assert result.code == "late"
    handled = car.next_event()
    assert isinstance(handled, RequestHandled)
    assert handled.decision is None
    assert not handled.allowed
    # The deadline restarts with the fresh challenge in the Result.
    now = late + ALLOWED_LATENCY
    result = answer(car, phone, request(world, phone, world.token(), Action.UNLOCK), now=now)
    assert result.code == "granted"


def test_a_repeated_request_is_answered_from_the_cache_and_never_decided_twice(
    world: World,
) -> None:
    car, phone = connect(car_state(world))
    chunks = phone.send(request(world, phone, world.token(), Action.UNLOCK))
    deliver(chunks, car, 0.1)
    first = car.data_to_send()
    deliver(phone.retransmit(), car, 0.3)  # our result was "lost": the phone sends again
    assert car.data_to_send() == first
    events = [car.next_event(), car.next_event(), car.next_event()]
    assert isinstance(events[0], RequestHandled)
    assert isinstance(events[1], ReplyRepeated)
    assert events[2] is NEED_DATA


def test_a_replayed_request_on_a_new_connection_is_denied(world: World) -> None:
    state = car_state(world)
    car, phone = connect(state)
    recorded = request(world, phone, world.token(), Action.UNLOCK)
    assert answer(car, phone, recorded, 0.1).code == "granted"
    car2, attacker = connect(state, now=1.0)
    # The request names no challenge: the car binds it to its own, so an old proof fails.
    assert answer(car2, attacker, recorded, 1.1).code == "bad_proof"


def test_courier_documents_apply_once_and_a_stale_one_is_reported_not_fatal(
    world: World,
) -> None:
    state = car_state(world)
    car, phone = connect(state)
    token = world.token(token_id=b"\x01" * 16)
    document = revocation_of(world, b"\x01" * 16)
    assert answer(car, phone, RevocationList(document), 0.1).code == "applied"
    assert state.revocations.sequence == 1
    assert answer(car, phone, RevocationList(document), 0.2).code == "stale"
    assert answer(car, phone, TrustUpdate(world.trust.update or b""), 0.3).code == "stale"
    events = [car.next_event() for _ in range(3)]
    assert [e.code for e in events if isinstance(e, CourierHandled)] == [
        "applied",
        "stale",
        "stale",
    ]
    result = answer(car, phone, request(world, phone, token, Action.UNLOCK), 0.4)
    assert result.code == "revoked"
    assert result.status.revocation_sequence == 1


def test_signed_time_to_the_cars_nonce_clears_a_clock_reset(world: World) -> None:
    clock = TrustedClock.restore(
        TrustedClock.provisioned(now=NOW, mono=0.0, boot_id="old").encode(0.0),
        mono=0.0,
        boot_id="new",
    )
    state = car_state(world, clock=clock)
    car, phone = connect(state)
    guest = world.token(Role.GUEST, expires=NOW + DAY)
    assert answer(car, phone, request(world, phone, guest, Action.UNLOCK), 0.1).code == (
        "untrusted_time"
    )
    assert phone.challenge is not None
    nonce = phone.challenge.time_nonce
    wrong = sign_time(world.issuer, nonce=bytes(16), now=NOW + 60)
    assert answer(car, phone, TimeAnswer(wrong), 0.2).code == "nonce_mismatch"
    signed = sign_time(world.issuer, nonce=nonce, now=NOW + 60)
    result = answer(car, phone, TimeAnswer(signed), 0.3)
    assert result.code == "applied"
    assert not result.status.clock_reset
    assert result.time_nonce != nonce  # never reused
    assert answer(car, phone, TimeAnswer(signed), 0.4).code == "nonce_mismatch"
    assert answer(car, phone, request(world, phone, guest, Action.UNLOCK), 0.5).code == "granted"


def test_busy_car_answers_busy_and_closes(world: World) -> None:
    car = CarSession(car_state(world), allowed_latency=0.5)
    car.refuse(1500)
    phone = PhoneSession()
    deliver(car.data_to_send(), phone, 0.0)
    event = phone.next_event()
    assert isinstance(event, BusyReceived)
    assert event.busy.retry_after_ms == 1500
    assert phone.state is SessionState.CLOSED
    assert car.state is SessionState.CLOSED


def test_messages_in_the_wrong_state_are_protocol_errors(world: World) -> None:
    phone = PhoneSession()
    with pytest.raises(LocalProtocolError):  # nothing to answer yet
        phone.send(RevocationList(b"x"))
    car = CarSession(car_state(world), allowed_latency=0.5, random_bytes=random_source())
    with pytest.raises(LocalProtocolError):  # not started
        car.receive_data(b"\x00\x00\x00\x00", 0.0)
    car.start(0.0)
    with pytest.raises(LocalProtocolError):
        car.start(0.0)
    # A phone that talks like a car:
    challenge = Challenge(bytes(32), bytes(16), car_state(world).status(0.0))
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(split_frame(0, encode(challenge), 182), car, 0.1)
    assert caught.value.reason is BleReason.UNEXPECTED_MESSAGE
    assert car.state is SessionState.FAILED
    with pytest.raises(LocalProtocolError):
        car.receive_data(b"\x00\x00\x00\x00", 0.2)


def test_the_car_speaking_out_of_turn_is_refused(world: World) -> None:
    _car, phone = connect(car_state(world))
    assert isinstance(phone.next_event(), ChallengeReceived)
    with pytest.raises(RemoteProtocolError):  # READY: the car speaks only when spoken to
        deliver(split_frame(9, encode(Busy(0)), 182), phone, 0.1)


def test_a_broken_answer_to_an_unlock_may_have_succeeded(world: World) -> None:
    _car, phone = connect(car_state(world))
    phone.send(request(world, phone, world.token(), Action.UNLOCK))
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(split_frame(1, b"\xff", 182), phone, 0.1)
    assert caught.value.may_have_succeeded
    assert not caught.value.retry_safe
    # A broken answer to a courier document: retrying is safe (the car refuses it as stale).
    _car, phone = connect(car_state(world))
    phone.send(RevocationList(b"x"))
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(split_frame(1, b"\xff", 182), phone, 0.1)
    assert caught.value.retry_safe


chunks = st.lists(st.binary(min_size=0, max_size=200), max_size=20)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=chunks)
def test_random_bytes_into_the_car_raise_only_protocol_errors(
    world: World, garbage: list[bytes]
) -> None:
    car = CarSession(car_state(world), allowed_latency=0.5, random_bytes=random_source())
    car.start(0.0)
    try:
        deliver(garbage, car, 0.1)
    except RemoteProtocolError:
        assert car.state is SessionState.FAILED


@settings(max_examples=200, deadline=None)
@given(garbage=chunks)
def test_random_bytes_into_the_phone_raise_only_protocol_errors(garbage: list[bytes]) -> None:
    phone = PhoneSession()
    try:
        deliver(garbage, phone, 0.1)
    except RemoteProtocolError:
        assert phone.state is SessionState.FAILED


message_bodies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.binary(max_size=40)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(-2, 12), inner, max_size=8)
    ),
    max_leaves=20,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(st.integers(0, 12), message_bodies, max_size=11), kind=st.integers(0, 8)
)
def test_well_framed_random_messages_raise_only_protocol_errors(
    world: World, body: dict[int, object], kind: int
) -> None:
    import cbor2

    payload = cbor2.dumps({1: kind, **body} if kind else body)
    for session in (
        CarSession(car_state(world), allowed_latency=0.5, random_bytes=random_source()),
        PhoneSession(),
    ):
        if isinstance(session, CarSession):
            session.start(0.0)
        try:
            deliver(split_frame(0, payload, 182), session, 0.1)
        except RemoteProtocolError:
            continue
        # Only a valid message gets through: the car answered a phone message, or the phone
        # took a challenge or a busy.
        if isinstance(session, CarSession):
            assert session.next_event() is not NEED_DATA
        else:
            assert isinstance(session.next_event(), ChallengeReceived | BusyReceived)


def test_message_type_names_cover_both_directions() -> None:
    assert {m.name for m in MessageType} == {
        "CHALLENGE",
        "UNLOCK_REQUEST",
        "RESULT",
        "BUSY",
        "REVOCATION_LIST",
        "TRUST_UPDATE",
        "TIME_ANSWER",
    }
