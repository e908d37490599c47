"""Strict CBOR decoding shared by every keycore decoder, and the project's one base64url.

One CBOR item in preferred serialization, nothing after it, no duplicate map keys, no indefinite
lengths, bounded nesting: a document is accepted only if encoding what was decoded gives back the
very same bytes. So two implementations can never read one signed document two ways (this also
refuses bignum tags standing in for small integers and over-long length heads).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import cbor2

from keycore.errors import KeycoreError, Reason

MAX_DEPTH = 16


def loads_strict(data: bytes, error: type[KeycoreError], *, max_size: int) -> Any:
    """Decode ``data`` as one CBOR item in preferred serialization, or raise ``error``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(Reason.MALFORMED, "not bytes")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:  # before anything is parsed or copied
        raise error(Reason.TOO_LARGE, f"{size} > {max_size} bytes")
    data = bytes(data)
    try:
        value = cbor2.loads(
            data, max_depth=MAX_DEPTH, allow_indefinite=False, allow_duplicate_keys=False
        )
    except Exception as exc:  # any decoder failure is malformed input, by definition
        raise error(Reason.MALFORMED, f"cbor: {type(exc).__name__}") from None
    # Encoding the value again must give the same bytes: this refuses trailing bytes (which
    # cbor2.loads ignores), over-long heads and bignums standing in for small integers.
    try:
        canonical = cbor2.dumps(value) == data
    except Exception:  # a decoded value the encoder cannot write back is not ours
        canonical = False
    if not canonical:
        raise error(Reason.MALFORMED, "not in preferred serialization")
    return value


def dumps(value: Any) -> bytes:
    return cbor2.dumps(value)


def as_map(
    value: object, error: type[KeycoreError], keys: set[int], required: set[int]
) -> dict[Any, Any]:
    """``value`` as a map whose keys are all in ``keys`` and include ``required``.

    Keys must be integers proper: 3.0 and True compare equal to 3 and 1 in Python, not in CBOR.
    """
    if not isinstance(value, dict):
        raise error(Reason.MALFORMED, "expected a map")
    present = value.keys()
    if not present <= keys or not required <= present:
        raise error(Reason.MALFORMED, "unexpected or missing map keys")
    for key in present:
        if type(key) is not int:
            raise error(Reason.MALFORMED, "map keys must be integers")
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


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 §5 without ``=``): how every part writes bytes into JSON."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of unpadded base64url in its one spelling; ValueError for anything else.

    The standard decoder skips characters outside the alphabet, takes ``+`` and ``/`` and ignores
    stray low bits in the last character; decoding and encoding again must give back ``text``, so
    one value has one spelling (and padding is refused).
    """
    if not isinstance(text, str):
        raise ValueError("base64url must be text")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if b64url_encode(data) != text:
        raise ValueError("not canonical unpadded base64url")
    return data
