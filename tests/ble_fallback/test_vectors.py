"""The BLE vectors in tests/vectors/ble.json, checked through ble_fallback's public API."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from ble_fallback.errors import BleReason, RemoteProtocolError
from ble_fallback.framing import FrameReader, split_frame
from ble_fallback.messages import (
    MAX_CAR_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES,
    MessageType,
    Result,
    decode,
    encode,
)
from ble_fallback.protocol import CarSession, RequestMalformed, SessionState
from tests.ble_fallback.harness import car_state, random_source
from tests.conftest import World
from tests.vectors.ble import fields
from tests.vectors.generate import vector_files

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


@functools.cache
def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "ble.json").read_text(encoding="utf-8"))
    return data


def input_of(case: dict[str, Any]) -> bytes:
    data = bytes.fromhex(case["input"])
    return data + bytes(case.get("pad_to", len(data)) - len(data))


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in load()["cases"]])
def test_message_vector(case: dict[str, Any]) -> None:
    data = input_of(case)
    if case["expected"] == "valid":
        message = decode(data)
        assert fields(message) == case["decoded"]
        assert encode(message) == data
    else:
        with pytest.raises(RemoteProtocolError) as caught:
            decode(data)
        assert caught.value.reason is BleReason(case["expected"])


@pytest.mark.parametrize("frame", [pytest.param(f, id=f["name"]) for f in load()["frames"]])
def test_frame_vector(frame: dict[str, Any]) -> None:
    message = bytes.fromhex(frame["message"])
    chunks = [bytes.fromhex(c) for c in frame["chunks"]]
    assert split_frame(frame["seq"], message, frame["chunk_size"]) == chunks
    assert all(len(c) <= frame["mtu"] - 3 for c in chunks)
    reader = FrameReader(max_frame=MAX_MESSAGE_BYTES, gap_timeout=1.0)
    delivered = [f for c in chunks if (f := reader.receive(c, 0.0)) is not None]
    assert [(f.seq, f.payload) for f in delivered] == [(frame["seq"], message)]


REFUSALS = [pytest.param(c, id=c["name"]) for c in load()["cases"] if c["expected"] != "valid"]


@pytest.mark.parametrize("case", REFUSALS)
def test_a_car_answers_a_refusal_as_its_vector_says(world: World, case: dict[str, Any]) -> None:
    car = CarSession(
        car_state(world), allowed_latency=0.5, chunk_size=512, random_bytes=random_source()
    )
    car.start(0.0)
    reader = FrameReader(max_frame=MAX_CAR_MESSAGE_BYTES, gap_timeout=1.0)
    assert reader.receive(car.data_to_send()[0], 0.0) is not None  # the challenge, one chunk
    try:
        for chunk in split_frame(0, input_of(case), 512):
            car.receive_data(chunk, 0.1)
    except RemoteProtocolError:
        assert case["car_answer"] == "protocol_error"
        assert car.state is SessionState.FAILED
        return
    assert case["car_answer"] == "malformed_result"
    (frame,) = [f for c in car.data_to_send() if (f := reader.receive(c, 0.1)) is not None]
    result = decode(frame.payload, max_size=MAX_CAR_MESSAGE_BYTES)
    assert isinstance(result, Result)
    assert (result.code, result.action) == ("malformed", None)
    assert car.next_event() == RequestMalformed(result.subject)


def test_every_message_type_and_refusal_has_a_vector() -> None:
    cases = load()["cases"]
    types = {c["decoded"]["type"] for c in cases if c["expected"] == "valid"}
    assert types == {t.name.lower() for t in MessageType}
    assert {c["expected"] for c in cases} == {"valid", "malformed", "too_large"}
    answers = {c.get("car_answer") for c in cases if c["expected"] != "valid"}
    assert answers == {"malformed_result", "protocol_error"}
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names))


def test_the_committed_file_is_what_the_generator_writes() -> None:
    assert (VECTORS / "ble.json").read_bytes() == vector_files()["ble.json"]
