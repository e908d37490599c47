"""Device proofs on API requests: bound to method, path, body, time and nonce; strict parsing."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from keycore import InvalidProof, Reason, SoftwareSigner
from keycore.request_proof import parse_request_proof, sign_request, verify_request_proof

NOW = 1_800_000_000
PHONE = SoftwareSigner.generate()
BODY = b'{"vin": "5YJ3E1EA7KF000001"}'


def header(**changes: object) -> str:
    args: dict[str, object] = {
        "device_id": "dev-1",
        "method": "POST",
        "path": "/v1/vehicles/5YJ3E1EA7KF000001/keys",
        "body": BODY,
        "timestamp": NOW,
        "nonce": b"\x07" * 16,
    }
    args.update(changes)
    return sign_request(PHONE, **args)  # type: ignore[arg-type]


def check(value: str, **changes: object) -> None:
    args: dict[str, object] = {
        "public_key": PHONE.public_key,
        "method": "POST",
        "path": "/v1/vehicles/5YJ3E1EA7KF000001/keys",
        "body": BODY,
        "now": NOW + 5,
    }
    args.update(changes)
    verify_request_proof(parse_request_proof(value), **args)  # type: ignore[arg-type]


def reason(value: str, **changes: object) -> Reason:
    with pytest.raises(InvalidProof) as caught:
        check(value, **changes)
    return caught.value.reason


def test_valid_proof_and_parsed_fields() -> None:
    value = header()
    check(value)
    proof = parse_request_proof(value)
    assert (proof.device_id, proof.timestamp, proof.nonce) == ("dev-1", NOW, b"\x07" * 16)


def test_random_nonce_by_default() -> None:
    assert (
        parse_request_proof(header(nonce=None)).nonce
        != parse_request_proof(header(nonce=None)).nonce
    )


@pytest.mark.parametrize(
    "change",
    [
        {"method": "DELETE"},
        {"path": "/v1/vehicles/5YJ3E1EA7KF000001/keys?x=1"},
        {"body": BODY + b" "},
        {"public_key": SoftwareSigner.generate().public_key},
    ],
)
def test_bound_to_everything_it_signs(change: dict[str, object]) -> None:
    assert reason(header(), **change) is Reason.BAD_PROOF


def test_stale_timestamps() -> None:
    assert reason(header(), now=NOW + 61) is Reason.STALE
    assert reason(header(), now=NOW - 61) is Reason.STALE
    check(header(), now=NOW + 60)


def test_fields_in_any_order_but_each_once() -> None:
    parts = header().split(", ")
    check(", ".join(reversed(parts)))
    assert reason(", ".join([*parts, parts[0]])) is Reason.MALFORMED
    assert reason(", ".join(parts[1:])) is Reason.MALFORMED


@pytest.mark.parametrize(
    "value",
    [
        "",
        "device=dev-1",
        "device=dev 1, ts=1, nonce=AAAAAAAAAAAAAAAAAAAAAA, sig=AA",
        "device=dev-1, ts=-1, nonce=AAAAAAAAAAAAAAAAAAAAAA, sig=AA",
        "device=dev-1, ts=1, nonce=AA, sig=" + "A" * 86,
        "x" * 600,
    ],
)
def test_malformed_headers(value: str) -> None:
    assert reason(value) is Reason.MALFORMED


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_any_text_is_parsed_or_refused_as_malformed(value: str) -> None:
    try:
        parse_request_proof(value)
    except InvalidProof as error:
        refused = error.reason
    else:
        return
    assert refused is Reason.MALFORMED


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.characters(codec="ascii"))
@example(58, "\x1f")  # a control character where a space may stand: Python's \s would take it
def test_any_one_character_change_is_refused(position: int, char: str) -> None:
    value = header()
    position %= len(value)
    mutated = value[:position] + char + value[position + 1 :]
    if mutated == value:
        return
    with pytest.raises(InvalidProof):
        check(mutated)
