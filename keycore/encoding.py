"""Strict CBOR decoding shared by every keycore decoder.

One CBOR item, nothing after it, no duplicate map keys, no indefinite lengths, bounded nesting: so
two implementations can never read one signed document two ways. (Encoders use preferred
serialization; decoders tolerate a longer-than-needed integer head, whose value is the same.)
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from keycore.errors import KeycoreError, Reason

MAX_DEPTH = 16


def loads_strict(data: bytes, error: type[KeycoreError], *, max_size: int) -> Any:
    """Decode ``data`` as one CBOR item in preferred serialization, or raise ``error``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(Reason.MALFORMED, "not bytes")
    if len(data) > max_size:
        raise error(Reason.TOO_LARGE, f"{len(data)} > {max_size} bytes")
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream, max_depth=MAX_DEPTH, allow_indefinite=False, allow_duplicate_keys=False
        ).decode()
    except Exception as exc:  # any decoder failure is malformed input, by definition
        raise error(Reason.MALFORMED, f"cbor: {type(exc).__name__}") from None
    if stream.tell() != len(data):
        raise error(Reason.MALFORMED, "trailing bytes after the CBOR item")
    return value


def dumps(value: Any) -> bytes:
    return cbor2.dumps(value)


def as_map(
    value: object, error: type[KeycoreError], keys: set[int], required: set[int]
) -> dict[Any, Any]:
    """``value`` as a map whose keys are all in ``keys`` and include ``required``."""
    if not isinstance(value, dict):
        raise error(Reason.MALFORMED, "expected a map")
    present = value.keys()
    if not present <= keys or not required <= present:
        raise error(Reason.MALFORMED, "unexpected or missing map keys")
    return value


def as_int(value: object, error: type[KeycoreError], lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise error(Reason.MALFORMED, "integer out of range")
    return value


def as_bytes(value: object, error: type[KeycoreError], lo: int, hi: int) -> bytes:
    if type(value) is not bytes or not lo <= len(value) <= hi:
        raise error(Reason.MALFORMED, "byte string of the wrong length")
    return value


def as_list(value: object, error: type[KeycoreError], lo: int, hi: int) -> list[Any]:
    if not isinstance(value, list | tuple) or not lo <= len(value) <= hi:
        raise error(Reason.MALFORMED, "array of the wrong length")
    return list(value)
