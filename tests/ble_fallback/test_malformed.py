"""A well-framed phone message the car cannot read is answered with a ``malformed`` Result — the
phone learns that nothing ran, the session goes on — while frame-level garbage, and messages no
phone sends, still end the session. The classic case: a DER-encoded proof (what iOS and Android
signing APIs return by default) instead of the raw 64-byte r ‖ s."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ble_fallback.errors import BleReason, MalformedMessage, RemoteProtocolError
from ble_fallback.framing import FrameReader, split_frame
from ble_fallback.messages import (
    MAX_CAR_MESSAGE_BYTES,
    CarStatus,
    MessageType,
    Result,
    RevocationList,
    UnlockRequest,
    decode,
    encode,
)
from ble_fallback.protocol import (
    NEED_DATA,
    CarEvent,
    CarSession,
    CourierHandled,
    NeedData,
    PhoneSession,
    ReplyRepeated,
    RequestHandled,
    RequestMalformed,
    ResultReceived,
    SessionState,
)
from keycore import Action, prove
from tests.ble_fallback.harness import car_state, connect, deliver, random_source
from tests.conftest import VIN, World
from tests.vectors.ble import der

CHUNK = 182


def signed_request(world: World, phone: PhoneSession, action: Action) -> UnlockRequest:
    assert phone.challenge is not None
    token = world.token()
    proof = prove(world.phone, challenge=phone.challenge.nonce, vin=VIN, action=action, token=token)
    return UnlockRequest(token, action, proof)


def events_of(car: CarSession) -> list[CarEvent]:
    events = []
    while not isinstance(event := car.next_event(), NeedData):
        events.append(event)
    return events


def result_at_phone(car: CarSession, phone: PhoneSession, now: float) -> Result:
    deliver(car.data_to_send(), phone, now)
    while not isinstance(event := phone.next_event(), ResultReceived):
        assert event is not NEED_DATA, "the car sent no Result"
    return event.result


def test_a_der_proof_is_answered_malformed_and_the_session_goes_on(world: World) -> None:
    car, phone = connect(car_state(world))
    phone.next_event()  # the challenge
    good = signed_request(world, phone, Action.UNLOCK)
    assert len(der(good.proof)) in range(68, 73)

    deliver(phone.send(UnlockRequest(good.token, good.action, der(good.proof))), car, 0.1)
    result = result_at_phone(car, phone, 0.1)

    assert (result.subject, result.code, result.action) == (
        MessageType.UNLOCK_REQUEST,
        "malformed",
        None,
    )
    assert not result.ok
    assert events_of(car) == [RequestMalformed(MessageType.UNLOCK_REQUEST)]
    assert (car.state, phone.state) == (SessionState.READY, SessionState.READY)
    # The challenge the unreadable request answered is withdrawn: its raw proof is now a replay.
    deliver(phone.send(good), car, 0.2)
    assert result_at_phone(car, phone, 0.2).code == "bad_proof"
    # ...and the fresh challenge each Result carried works: a fixed phone unlocks on this link.
    deliver(phone.send(signed_request(world, phone, Action.UNLOCK)), car, 0.3)
    assert result_at_phone(car, phone, 0.3).code == "granted"


def request_fields(world: World, phone: PhoneSession) -> dict[int, object]:
    request = signed_request(world, phone, Action.UNLOCK)
    return {1: 2, 2: request.token, 3: int(request.action), 4: request.proof}


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("action_as_text", {3: "unlock"}),
        ("token_as_text", {2: "d28443a10126"}),
        ("proof_as_integer", {4: 7}),
        ("a_missing_proof", {4: None}),
        ("an_unknown_key", {9: b"extra"}),
    ],
)
def test_a_wrong_typed_field_is_answered_malformed_and_nothing_is_decided(
    world: World, name: str, change: dict[int, object]
) -> None:
    car, phone = connect(car_state(world))
    phone.next_event()
    body = {k: v for k, v in {**request_fields(world, phone), **change}.items() if v is not None}
    phone.send(signed_request(world, phone, Action.UNLOCK))  # what the phone meant to send...
    deliver(split_frame(0, cbor2.dumps(body), CHUNK), car, 0.1)  # ...and what a buggy one did

    result = result_at_phone(car, phone, 0.1)

    assert (result.subject, result.code) == (MessageType.UNLOCK_REQUEST, "malformed")
    assert events_of(car) == [RequestMalformed(MessageType.UNLOCK_REQUEST)]


def test_a_courier_document_of_the_wrong_type_is_answered_malformed(world: World) -> None:
    car, phone = connect(car_state(world))
    phone.next_event()
    phone.send(RevocationList(b"\x01"))
    deliver(split_frame(0, cbor2.dumps({1: 5, 2: "d284"}), CHUNK), car, 0.1)

    result = result_at_phone(car, phone, 0.1)

    assert (result.subject, result.code, result.action) == (
        MessageType.REVOCATION_LIST,
        "malformed",
        None,
    )
    assert events_of(car) == [RequestMalformed(MessageType.REVOCATION_LIST)]


def test_a_repeated_unreadable_request_gets_the_cached_answer(world: World) -> None:
    car, phone = connect(car_state(world))
    phone.next_event()
    good = signed_request(world, phone, Action.UNLOCK)
    deliver(phone.send(UnlockRequest(good.token, good.action, der(good.proof))), car, 0.1)
    first = car.data_to_send()
    deliver(phone.retransmit(), car, 0.3)  # the Result was "lost": the phone sends again

    assert car.data_to_send() == first
    assert events_of(car) == [RequestMalformed(MessageType.UNLOCK_REQUEST), ReplyRepeated(0)]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\x00junk", id="not_cbor"),
        pytest.param(cbor2.dumps([2, b"x"]), id="not_a_map"),
        pytest.param(cbor2.dumps({2: b"x"}), id="no_type"),
        pytest.param(cbor2.dumps({1: 9, 2: b"x"}), id="unknown_type"),
        pytest.param(cbor2.dumps({1: 1, 2: b"x"}), id="a_broken_challenge"),
        pytest.param(cbor2.dumps({1: 3}), id="a_broken_result"),
    ],
)
def test_what_names_no_phone_message_still_ends_the_session(world: World, payload: bytes) -> None:
    car, _ = connect(car_state(world))
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(split_frame(0, payload, CHUNK), car, 0.1)
    assert caught.value.reason is BleReason.MALFORMED
    assert car.state is SessionState.FAILED
    assert car.data_to_send() == []
    assert events_of(car) == []


def test_the_phone_still_fails_on_a_car_message_it_cannot_read() -> None:
    """The car's bytes are not the phone's to answer: a broken Result stays a protocol error
    (the phone cannot tell what ran), raised as a MalformedMessage for type 3."""
    with pytest.raises(MalformedMessage) as caught:
        decode(cbor2.dumps({1: 3, 2: b"x"}), max_size=MAX_CAR_MESSAGE_BYTES)
    assert caught.value.message_type == 3


# Any well-framed payload: bytes, or CBOR maps that claim a phone message's type.
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.binary(max_size=80)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.integers(-2, 12), inner, max_size=4)
    ),
    max_leaves=12,
)
phone_maps = st.builds(
    lambda kind, body: cbor2.dumps({**body, 1: kind}),
    st.sampled_from([2, 5, 6, 7]),
    st.dictionaries(st.integers(0, 12), values, max_size=6),
)
payloads = st.binary(min_size=1, max_size=300) | phone_maps


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=payloads)
def test_a_well_framed_junk_payload_is_a_malformed_result_or_a_protocol_error(
    world: World, payload: bytes
) -> None:
    car = CarSession(car_state(world), allowed_latency=0.5, random_bytes=random_source())
    car.start(0.0)
    opening = car.data_to_send()
    try:
        deliver(split_frame(0, payload, CHUNK), car, 0.1)
    except RemoteProtocolError:
        assert car.state is SessionState.FAILED
        assert car.data_to_send() == []
        return
    events = events_of(car)
    reader = FrameReader(max_frame=MAX_CAR_MESSAGE_BYTES, gap_timeout=1.0)
    replies = [f for c in opening + car.data_to_send() if (f := reader.receive(c, 0.1))]
    assert len(replies) == 2  # the opening challenge, then exactly one answer
    result = decode(replies[1].payload, max_size=MAX_CAR_MESSAGE_BYTES)
    assert isinstance(result, Result)
    assert result.code not in ("granted", "applied")  # junk never opens a car or changes it
    assert not any(isinstance(e, RequestHandled) and e.allowed for e in events)
    try:
        decode(payload)
    except MalformedMessage:
        # Unreadable: answered malformed, and nothing was decided or applied.
        assert result.code == "malformed"
        assert events == [RequestMalformed(result.subject)]
    else:  # junk that happens to parse is decided (and refused) like any message
        (event,) = events
        assert isinstance(event, RequestHandled | CourierHandled)


def test_a_readable_request_keeps_its_action_in_the_result(world: World) -> None:
    """The rule the phone decodes by: an unlock Result names its action unless it says the car
    could not read the request."""
    car, phone = connect(car_state(world))
    phone.next_event()
    deliver(phone.send(signed_request(world, phone, Action.LOCK)), car, 0.1)
    assert result_at_phone(car, phone, 0.1).action is Action.LOCK
    status = CarStatus(0, 0, 0, False)
    readable = Result(MessageType.UNLOCK_REQUEST, "granted", None, bytes(32), bytes(16), status)
    with pytest.raises(RemoteProtocolError):
        decode(encode(readable))
