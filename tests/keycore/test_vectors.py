"""The JSON test vectors in tests/vectors, checked through keycore's public API.

Each case is accepted with exactly its decoded fields or refused with exactly its reason code, and
the committed files are what the generator writes today, so vectors cannot drift from the code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keycore import (
    Action,
    InvalidProof,
    InvalidRevocationList,
    InvalidSignedTime,
    InvalidToken,
    InvalidTrustUpdate,
    KeycoreError,
    KeyToken,
    Reason,
    RevocationState,
    TrustStore,
    read_signed_time,
    verify,
    verify_proof,
)
from tests.vectors.generate import vector_files

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@functools.cache
def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def cases(name: str) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in load(name)["cases"]]


def public_key(xy_hex: str) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + bytes.fromhex(xy_hex)
    )


def input_of(case: dict[str, Any]) -> bytes:
    data = bytes.fromhex(case["input"])
    if "pad_to" in case:
        data += bytes(case["pad_to"] - len(data))
    return data


def base_trust(context: dict[str, Any]) -> TrustStore:
    root = public_key(context["root_public_key"])
    return TrustStore(root).apply(bytes.fromhex(context["trust_update"]))


def refused(
    error: type[KeycoreError], case: dict[str, Any], attempt: Any, *args: Any, **kwargs: Any
) -> None:
    with pytest.raises(error) as caught:
        attempt(*args, **kwargs)
    assert caught.value.reason is Reason(case["expected"]), caught.value.detail


def token_fields(token: KeyToken) -> dict[str, Any]:
    schedule = None
    if token.schedule is not None:
        schedule = {
            "utc_offset": token.schedule.utc_offset,
            "windows": [[w.days, w.start, w.end] for w in token.schedule.windows],
        }
    return {
        "token_id": token.token_id.hex(),
        "vin": token.vin,
        "holder": token.holder.hex(),
        "holder_id": token.holder_id.hex(),
        "role": token.role.name.lower(),
        "entitlements": [a.name.lower() for a in sorted(token.entitlements)],
        "not_before": token.not_before,
        "expires": token.expires,
        "issued_at": token.issued_at,
        "schedule": schedule,
        "kid": token.kid.hex(),
    }


@pytest.mark.parametrize("case", cases("tokens.json"))
def test_token_vector(case: dict[str, Any]) -> None:
    context = load("tokens.json")["context"]
    trust = base_trust(context)
    revocations = RevocationState(context["vin"])
    if context["revocation_list"]:
        revocations = revocations.apply(
            bytes.fromhex(context["revocation_list"]), trust=trust, now=context["now"]
        )
    args = {
        "vin": context["vin"],
        "action": Action(case.get("action", context["action"])),
        "now": case.get("now", context["now"]),
        "trust": trust,
        "revocations": revocations,
    }
    if case["expected"] == "valid":
        grant = verify(input_of(case), **args)
        assert grant.action is args["action"]
        assert token_fields(grant.token) == case["decoded"]
        assert grant.token.holder == bytes.fromhex(case["decoded"]["holder"])
    else:
        refused(InvalidToken, case, verify, input_of(case), **args)


@pytest.mark.parametrize("case", cases("proofs.json"))
def test_proof_vector(case: dict[str, Any]) -> None:
    context = load("proofs.json")["context"]
    token = bytes.fromhex(context["token"])
    challenge = bytes.fromhex(context["challenge"])
    action = Action(case.get("action", context["action"]))
    args = {
        "holder": public_key(context["holder_public_key"]),
        "challenge": challenge,
        "vin": context["vin"],
        "action": action,
        "token": token,
    }
    if case["expected"] == "valid":
        verify_proof(input_of(case), **args)
        # The message as docs/protocol.md defines it, built here without keycore.
        message = (
            b"phonekey/pop/v1\x00"
            + challenge
            + context["vin"].encode("ascii")
            + bytes([action])
            + hashlib.sha256(token).digest()
        )
        assert message.hex() == case["decoded"]["message"]
        proof = input_of(case)
        der = encode_dss_signature(
            int.from_bytes(proof[:32], "big"), int.from_bytes(proof[32:], "big")
        )
        args["holder"].verify(der, message, ec.ECDSA(hashes.SHA256()))
    else:
        refused(InvalidProof, case, verify_proof, input_of(case), **args)


def revocation_fields(state: RevocationState) -> dict[str, Any]:
    return {
        "sequence": state.sequence,
        "tokens": {tid.hex(): expires for tid, expires in state.tokens.items()},
        "holders": {hid.hex(): list(entry) for hid, entry in state.holders.items()},
    }


@pytest.mark.parametrize("case", cases("revocation_lists.json"))
def test_revocation_list_vector(case: dict[str, Any]) -> None:
    context = load("revocation_lists.json")["context"]
    trust, now = base_trust(context), context["now"]
    state = RevocationState(context["vin"])
    for name in case["prior"]:
        state = state.apply(bytes.fromhex(context["lists"][name]), trust=trust, now=now)
    if case["expected"] == "valid":
        after = state.apply(input_of(case), trust=trust, now=now)
        assert revocation_fields(after) == case["decoded"]
    else:
        refused(InvalidRevocationList, case, state.apply, input_of(case), trust=trust, now=now)


def trust_fields(store: TrustStore) -> dict[str, Any]:
    return {
        "sequence": store.sequence,
        "keys": [
            {
                "kid": key.kid.hex(),
                "public_key": public_bytes(key.public_key).hex(),
                "not_before": key.not_before,
                "not_after": key.not_after,
            }
            for key in store.keys.values()
        ],
    }


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    numbers = key.public_numbers()
    return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")


@pytest.mark.parametrize("case", cases("trust_updates.json"))
def test_trust_update_vector(case: dict[str, Any]) -> None:
    context = load("trust_updates.json")["context"]
    store = TrustStore(public_key(context["root_public_key"]))
    assert store.root_kid.hex() == context["root_kid"]
    for name in case["prior"]:
        store = store.apply(bytes.fromhex(context["updates"][name]))
    if case["expected"] == "valid":
        after = store.apply(input_of(case))
        assert trust_fields(after) == case["decoded"]
        assert after.update == input_of(case)
    else:
        refused(InvalidTrustUpdate, case, store.apply, input_of(case))
        assert TrustStore.restore(store.root, store.update) == store  # refusal changed nothing


@pytest.mark.parametrize("case", cases("signed_time.json"))
def test_signed_time_vector(case: dict[str, Any]) -> None:
    context = load("signed_time.json")["context"]
    args = {"nonce": bytes.fromhex(context["nonce"]), "trust": base_trust(context)}
    if case["expected"] == "valid":
        assert read_signed_time(input_of(case), **args) == case["decoded"]["time"]
    else:
        refused(InvalidSignedTime, case, read_signed_time, input_of(case), **args)


TOKEN_REASONS = {
    "malformed",
    "too_large",
    "unknown_key",
    "algorithm_mismatch",
    "bad_signature",
    "wrong_vehicle",
    "not_yet_valid",
    "expired",
    "outside_schedule",
    "not_entitled",
    "revoked",
}
COVERAGE = {
    "tokens.json": TOKEN_REASONS,
    "proofs.json": {"bad_proof", "malformed"},
    "revocation_lists.json": {
        "stale",
        "gap",
        "wrong_vehicle",
        "bad_signature",
        "unknown_key",
        "algorithm_mismatch",
        "malformed",
        "too_large",
    },
    "trust_updates.json": {
        "stale",
        "bad_signature",
        "unknown_key",
        "algorithm_mismatch",
        "malformed",
        "too_large",
    },
    "signed_time.json": {
        "nonce_mismatch",
        "bad_signature",
        "unknown_key",
        "algorithm_mismatch",
        "malformed",
        "too_large",
    },
}


@pytest.mark.parametrize("name", sorted(COVERAGE))
def test_every_reason_has_a_vector_and_names_are_unique(name: str) -> None:
    all_cases = load(name)["cases"]
    expected = {c["expected"] for c in all_cases}
    assert "valid" in expected
    assert expected - {"valid"} == COVERAGE[name]
    assert all(Reason(e) for e in expected - {"valid"})
    names = [c["name"] for c in all_cases]
    assert len(names) == len(set(names))


def test_committed_vectors_are_what_the_generator_writes() -> None:
    files = vector_files()
    assert sorted(files) == sorted(p.name for p in VECTORS.glob("*.json"))
    for name, data in files.items():
        assert (VECTORS / name).read_bytes() == data, f"{name} is stale: run tests.vectors.generate"


def test_annotated_token_in_protocol_doc_is_the_owner_vector() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    block = re.search(r"<!-- token-dump:begin -->\n```text\n(.*?)```\n", text, re.DOTALL)
    assert block is not None
    dumped = "".join(line.split("#")[0] for line in block.group(1).splitlines())
    owner = next(c for c in load("tokens.json")["cases"] if c["name"] == "owner")
    assert bytes.fromhex(dumped.replace(" ", "")) == bytes.fromhex(owner["input"])
