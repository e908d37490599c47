"""Request bodies: pydantic models, strict, closed and bounded, and the one mapping of their
errors to the API's refusals.

A route declares its body's model (``keyserver.routing.Route.body``); the handler parses the
bytes with ``Model.parse`` where it always has (a device proof signs the raw bytes, so the
handler decides when they are read). Every model is strict (no coercion: ``true`` is not an
integer, ``7`` is not a string), refuses unknown fields and bounds every string, list and integer.

Refusals keep the codes clients know, all 400: ``invalid_json`` (not JSON), ``invalid_body``
(not an object), ``unknown_field``, ``missing_field``, ``invalid_field`` ("field 'x' must be
<the field's description>"), and a model's own codes (``weak_password``, ...) raised with
``refuse``. Of several errors one is answered, as the hand-written checks before them did: an
unknown field, else a missing one, else the first error in the fields' order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from keycore.cose import load_point
from keycore.encoding import b64url_decode
from keycore.token import check_vin
from keyserver.http import ApiError, parse_json_object

MAX_EMAIL_CHARS = 254  # RFC 5321's limit on a forward path, less its angle brackets
POINT_BYTES = 64
POINT_B64_CHARS = 86  # unpadded base64url of 64 bytes
MAX_PASSWORD_CHARS = 1024  # passwords.MAX_PASSWORD_BYTES bounds the bytes; this bounds the field
VIN_PATTERN = "^[A-HJ-NPR-Z0-9]{17}$"
ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"

# Basic on purpose: one @, a printable ASCII local part, dot-separated DNS labels after it.
# The local part allows every printable ASCII character but "@" (0x40).
_EMAIL = re.compile(r"[!-?A-~]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+")
# what _EMAIL accepts, before lower-casing (surrounding blanks are stripped too)
_EMAIL_DOC = "^[!-?A-~]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63})+$"
#: The codes a model may answer with besides the generic ones (``refuse``).
OWN_CODES = frozenset({"weak_password", "missing_field", "entitlement_not_allowed"})


class Body(BaseModel):
    """A request body: strict, closed (unknown fields refused), immutable once parsed."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """The body's bytes as this model; ApiError 400 with the API's codes otherwise."""
        return cls.of(parse_json_object(raw))

    @classmethod
    def of(cls, value: dict[str, Any]) -> Self:
        try:
            return cls.model_validate(value)
        except ValidationError as error:
            raise refusal(cls, error.errors(include_url=False, include_input=False)) from None


class EmptyRequest(Body):
    """A body that may be absent, and if present is ``{}``."""

    model_config = ConfigDict(json_schema_extra={"maxProperties": 0})


def refusal(model: type[BaseModel], errors: Iterable[ErrorDetails]) -> ApiError:
    """The one refusal answered for ``errors`` (the module docstring gives the order)."""
    listed = list(errors)
    for error in listed:
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            return ApiError(400, "unknown_field", f"unknown field {str(error['loc'][0])[:64]!r}")
    for error in listed:
        if error["type"] == "missing" and len(error["loc"]) == 1:
            return ApiError(400, "missing_field", f"field {error['loc'][0]!r} is required")
    first = listed[0]
    if first["type"] in OWN_CODES:
        return ApiError(400, first["type"], first["msg"])
    name = str(first["loc"][0]) if first["loc"] else ""
    field = model.model_fields.get(name)
    if field is None:  # a whole-body check without a code of its own
        return ApiError(400, "invalid_body", first["msg"])
    return invalid(name, field.description or "valid")


def invalid(name: str, expected: str) -> ApiError:
    return ApiError(400, "invalid_field", f"field {name!r} must be {expected}")


def refuse(code: str, message: str) -> PydanticCustomError:
    """An error a validator raises to answer with ``code`` (one of ``OWN_CODES``)."""
    assert code in OWN_CODES, code
    return PydanticCustomError(code, message)  # no context: the message is not formatted


# fields several bodies share


def normalised_email(raw: str) -> str:
    """The form accounts are stored and looked up under."""
    return raw.strip().lower()


def _email(raw: str) -> str:
    address = normalised_email(raw)
    if len(address) > MAX_EMAIL_CHARS or not _EMAIL.fullmatch(address):
        raise ValueError("not an e-mail address")
    return address


def _login_email(raw: str) -> str:
    address = normalised_email(raw)
    if len(address) > MAX_EMAIL_CHARS:
        raise ValueError("too long")
    return address


def _point(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != POINT_B64_CHARS:
        raise ValueError("not 86 characters of base64url")
    key = b64url_decode(value)  # a ValueError when it is not base64url
    if len(key) != POINT_BYTES:
        raise ValueError("not 64 bytes")
    load_point(key)  # a ValueError off the curve
    return key


#: An e-mail address, stripped and lower-cased: the form accounts are kept under.
Email = Annotated[
    str,
    AfterValidator(_email),
    Field(
        description=f"an e-mail address of at most {MAX_EMAIL_CHARS} characters",
        json_schema_extra={"minLength": 3, "maxLength": MAX_EMAIL_CHARS, "pattern": _EMAIL_DOC},
    ),
]
#: The address a login tries: stripped and lower-cased, bounded, not checked further (an
#: address nobody could register simply matches no account).
LoginEmail = Annotated[
    str,
    AfterValidator(_login_email),
    Field(
        description=f"an e-mail address of at most {MAX_EMAIL_CHARS} characters",
        json_schema_extra={"minLength": 3, "maxLength": MAX_EMAIL_CHARS},
    ),
]
#: The 64-byte x || y of a P-256 point, from its one unpadded base64url spelling.
PublicKey = Annotated[
    bytes,
    BeforeValidator(_point),
    WithJsonSchema({"type": "string", "pattern": f"^[A-Za-z0-9_-]{{{POINT_B64_CHARS}}}$"}),
    Field(description=f"unpadded base64url of a {POINT_BYTES}-byte P-256 point (x || y)"),
]
Vin = Annotated[
    str,
    Field(pattern=VIN_PATTERN, description="a VIN: 17 characters, no I, O or Q"),
    AfterValidator(check_vin),
]
#: A key, device or invitation id.
Id = Annotated[str, Field(pattern=ID_PATTERN, description="an id: 1 to 64 of [A-Za-z0-9_-]")]
#: The account's password, as given to check it (its policy is for new passwords only).
Password = Annotated[
    str,
    Field(
        max_length=MAX_PASSWORD_CHARS,
        description=f"the account password: at most {MAX_PASSWORD_CHARS} characters",
    ),
]
