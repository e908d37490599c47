"""Fixed test keys, times and the raw COSE and CBOR builders every vector file uses.

The private keys below are published test keys: never trust one outside tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from keycore import (
    ES256,
    SoftwareSigner,
    TrustedKey,
    sign_trust_update,
)
from keycore.cose import point_bytes

#: P-256 private scalars of the test keys: SHA-256("phonekey test vector key " + name) mod n.
SCALARS = {
    "root": 0x5D3240B625CECB98ABCA96133540E7A26A57248CA27D5DBDE93B58B11C271AF0,
    "issuer": 0xD5A21A0FD3EC8600EAFC6DAA7E4082CD02AAC4A170727E02DEF31A29F0CBAA5B,
    "issuer-next": 0x5B4E9DD94995CDE0B90F9AEE8C180DFF11060B31DCC9D2CC3670B244B0FD5C5C,
    "issuer-retired": 0x6AE60811B8CCFB67B1C916634AA037045622BE2162163D6BDD023E5DE5DA39C1,
    "stranger": 0x7B964E8E8D1B6FDBA9DFE7AA146C2EC4D07BA3362F490AF3048A629859950D58,
    "phone": 0xAD262AC084D2FAE63947C1B9B1ED05AEA50674631FE91F0E4628C1F69CF8D417,
    "other-phone": 0xD984BF2D485F4B9E39B6DEA4278D8199C9B15431FA6C39C233E1C8193F0BEA27,
}

VIN = "5YJ3E1EA7KF000001"
OTHER_VIN = "1HGCM82633A004352"
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z, a Friday
HOUR, DAY = 3600, 86_400
CHALLENGE = bytes(range(0x20, 0x40))
OTHER_CHALLENGE = bytes(range(0x21, 0x41))
TIME_NONCE = bytes(range(0x40, 0x60))

TYP_TOKEN, TYP_REV, TYP_TRUST, TYP_TIME = 61, "pk.rev", "pk.trust", "pk.time"
ES384, EDDSA = -35, -8

#: The issuer keys of the trust update every file starts from, with their validity windows.
ISSUER_WINDOWS = {
    "issuer": (NOW - 30 * DAY, NOW + 335 * DAY),
    "issuer-next": (NOW - 30 * DAY, NOW + 700 * DAY),
    "issuer-retired": (NOW - 400 * DAY, NOW - DAY),
}

# Claim keys (see docs/protocol.md).
AUD, EXP, NBF, IAT, CTI, CNF = 3, 4, 5, 6, 7, 8
ROLE, ENTITLEMENTS, SCHEDULE = -65537, -65538, -65539


# ---------------------------------------------------------------------------------------------
# keys and raw COSE building blocks


def signer(name: str) -> SoftwareSigner:
    return SoftwareSigner(ec.derive_private_key(SCALARS[name], ec.SECP256R1()))


def xy(name: str) -> bytes:
    return point_bytes(signer(name).public_key)


def kid(name: str) -> bytes:
    return signer(name).kid


def tid(n: int) -> bytes:
    """A fixed 16-byte token id."""
    return b"\x7e" * 8 + n.to_bytes(8, "big")


def header(key_id: bytes, typ: str | int, alg: int = ES256) -> bytes:
    return cbor2.dumps({1: alg, 4: key_id, 16: typ})


def to_be_signed(protected: bytes, payload: bytes, context: str = "Signature1") -> bytes:
    return cbor2.dumps([context, protected, b"", payload])


def envelope(
    protected: bytes, payload: bytes, signature: bytes, *, unprotected: bytes = b"\xa0"
) -> bytes:
    """Tag 18, array of 4, built byte by byte so that malformed variants are easy to make."""
    return (
        b"\xd2\x84"
        + cbor2.dumps(protected)
        + unprotected
        + cbor2.dumps(payload)
        + cbor2.dumps(signature)
    )


def sign1(
    key: str,
    payload: bytes,
    typ: str | int,
    *,
    alg: int = ES256,
    named: str | None = None,
    protected: bytes | None = None,
    context: str = "Signature1",
) -> bytes:
    """A COSE_Sign1 signed by ``key`` whose header names ``named``'s key id (default: ``key``)."""
    hdr = header(kid(named or key), typ, alg) if protected is None else protected
    return envelope(hdr, payload, signer(key).sign(to_be_signed(hdr, payload, context)))


def split(document: bytes) -> tuple[bytes, bytes, bytes]:
    """``(protected, payload, signature)`` of a well-formed COSE_Sign1."""
    tag = cbor2.loads(document)
    protected, _, payload, signature = tag.value
    return protected, payload, signature


@dataclass(frozen=True)
class Encoded:
    """A CBOR item given by its exact bytes, for encodings cbor2 would never produce."""

    data: bytes


def encode(value: Any) -> bytes:
    return value.data if isinstance(value, Encoded) else cbor2.dumps(value)


def raw_map(pairs: list[tuple[Any, Any]], *, indefinite: bool = False) -> bytes:
    """A CBOR map of ``pairs`` exactly as given: duplicate keys and indefinite length allowed."""
    body = b"".join(encode(k) + encode(v) for k, v in pairs)
    if indefinite:
        return b"\xbf" + body + b"\xff"
    assert len(pairs) < 24
    return bytes([0xA0 + len(pairs)]) + body


def flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def case(name: str, data: bytes, expected: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "input": data.hex(), "expected": expected, **extra}


def too_large(name: str, document: bytes, cap: int) -> dict[str, Any]:
    """A document padded with zero bytes to one byte over ``cap`` (kept short in the file)."""
    return case(name, document, "too_large", pad_to=cap + 1)


def trusted(name: str) -> TrustedKey:
    nbf, exp = ISSUER_WINDOWS[name]
    return TrustedKey(kid(name), ES256, signer(name).public_key, nbf, exp)


def trust_update(sequence: int, names: tuple[str, ...], *, now: int = NOW - DAY) -> bytes:
    return sign_trust_update(
        signer("root"), sequence=sequence, now=now, keys=[trusted(n) for n in names]
    )


ALL_ISSUERS = ("issuer", "issuer-next", "issuer-retired")
BASE_TRUST_UPDATE = trust_update(1, ALL_ISSUERS)


def trust_context() -> dict[str, Any]:
    return {
        "root_public_key": xy("root").hex(),
        "root_kid": kid("root").hex(),
        "trust_update": BASE_TRUST_UPDATE.hex(),
        "issuer_keys": [
            {
                "name": name,
                "kid": kid(name).hex(),
                "public_key": xy(name).hex(),
                "not_before": ISSUER_WINDOWS[name][0],
                "not_after": ISSUER_WINDOWS[name][1],
            }
            for name in ALL_ISSUERS
        ],
    }
