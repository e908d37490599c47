"""The one base64url: unpadded, and one spelling per value (keycore.encoding)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keycore.encoding import b64url_decode, b64url_encode


@given(st.binary(max_size=200))
def test_round_trip_without_padding(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert b64url_decode(text) == data


@given(st.text(max_size=40))
def test_any_text_decodes_only_from_its_own_spelling(text: str) -> None:
    try:
        data = b64url_decode(text)
    except ValueError:
        return
    assert b64url_encode(data) == text


@pytest.mark.parametrize(
    "text",
    [
        "AAE=",  # padded
        "AA==",
        "+/8",  # the standard alphabet
        "AB",  # stray low bits in the last character (AA is the one spelling of b"\0")
        "AA\n",  # the standard decoder skips characters outside the alphabet
        "A A",
        "A",  # no byte has a one-character spelling
        "é",
    ],
)
def test_other_spellings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        b64url_decode(text)


def test_only_text_is_decoded() -> None:
    with pytest.raises(ValueError, match="text"):
        b64url_decode(b"AA")  # type: ignore[arg-type]
