"""Request fields that several routes take: exact field sets, e-mail addresses, P-256 keys, VINs.

Every refusal of a body field is an ``ApiError`` 400 with code ``unknown_field``,
``missing_field`` or ``invalid_field`` and a message naming the field; a VIN in the path is
refused with ``invalid_vin``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from keycore.cose import load_point
from keycore.encoding import b64url_decode
from keycore.token import check_vin
from keyserver.http import ApiError

MAX_EMAIL_CHARS = 254  # RFC 5321's limit on a forward path, less its angle brackets
POINT_BYTES = 64
POINT_B64_CHARS = 86  # unpadded base64url of 64 bytes

# Basic on purpose: one @, a printable ASCII local part, dot-separated DNS labels after it.
# The local part allows every printable ASCII character but "@" (0x40).
_EMAIL = re.compile(r"[!-?A-~]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+")


def exact(body: dict[str, Any], names: tuple[str, ...]) -> Mapping[str, Any]:
    """``body`` if it has exactly the fields ``names``, all required."""
    for name in body:
        if name not in names:
            raise ApiError(400, "unknown_field", f"unknown field {name[:64]!r}")
    for name in names:
        if name not in body:
            raise ApiError(400, "missing_field", f"field {name!r} is required")
    return body


def invalid(name: str, expected: str) -> ApiError:
    return ApiError(400, "invalid_field", f"field {name!r} must be {expected}")


def string(body: Mapping[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise invalid(name, "a string")
    return value


def normalised_email(raw: str) -> str:
    """The form accounts are stored and looked up under."""
    return raw.strip().lower()


def email(body: Mapping[str, Any], name: str = "email") -> str:
    address = normalised_email(string(body, name))
    if len(address) > MAX_EMAIL_CHARS or not _EMAIL.fullmatch(address):
        raise invalid(name, f"an e-mail address of at most {MAX_EMAIL_CHARS} characters")
    return address


def public_key(body: Mapping[str, Any], name: str = "public_key") -> bytes:
    """The 64-byte x || y of a P-256 point, from its one unpadded base64url spelling."""
    text = string(body, name)
    expected = f"unpadded base64url of a {POINT_BYTES}-byte P-256 point (x || y)"
    if len(text) != POINT_B64_CHARS:
        raise invalid(name, expected)
    try:
        key = b64url_decode(text)
    except ValueError:
        raise invalid(name, expected) from None
    if len(key) != POINT_BYTES:
        raise invalid(name, expected)
    try:
        load_point(key)
    except ValueError:
        raise invalid(name, "a point on the P-256 curve") from None
    return key


def vin(body: Mapping[str, Any], name: str = "vin") -> str:
    try:
        return check_vin(string(body, name))
    except ValueError as error:
        raise ApiError(400, "invalid_field", f"field {name!r}: {error}") from None


def path_vin(request: web.Request) -> str:
    """The ``{vin}`` of the request's path, checked."""
    try:
        return check_vin(request.match_info["vin"])
    except ValueError as error:
        raise ApiError(400, "invalid_vin", str(error)) from None
