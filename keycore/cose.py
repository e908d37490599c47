"""COSE_Sign1 (RFC 9052) with ES256 only, P-256 keys as COSE_Key maps, and the signer seam.

This is keycore's "hazmat" layer: documents are signed with ``sign1`` and opened with
``keycore.trust.open_signed`` (over ``parse_sign1`` / ``verify_es256``), the one place that
decides whether a signer is trusted.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from keycore.encoding import as_bytes, as_int, as_map, loads_strict
from keycore.errors import KeycoreError, Reason

ES256 = -7
TAG_SIGN1 = 18
HDR_ALG = 1
HDR_KID = 4
HDR_TYP = 16
KID_BYTES = 8
SIGNATURE_BYTES = 64
MAX_PROTECTED_BYTES = 64

# COSE_Key labels (RFC 9052 §7, RFC 9053 §7.1)
KEY_KTY, KEY_KID, KEY_ALG, KEY_CRV, KEY_X, KEY_Y = 1, 2, 3, -1, -2, -3
KTY_EC2, CRV_P256 = 2, 1

_CURVE = ec.SECP256R1()
_ECDSA = ec.ECDSA(hashes.SHA256())
_ECDSA_DETERMINISTIC = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


class Signer(Protocol):
    """Anything that can make ES256 signatures under a key id: a software key, a KMS, an HSM.

    ``sign`` returns the 64-byte raw ``r || s`` signature over ``message`` (SHA-256 inside).
    """

    @property
    def kid(self) -> bytes: ...

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SoftwareSigner:
    """A P-256 private key held in process memory. Signatures are deterministic (RFC 6979)."""

    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> SoftwareSigner:
        return cls(ec.generate_private_key(_CURVE))

    @classmethod
    def from_pem(cls, pem: bytes) -> SoftwareSigner:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVE.name:
            raise ValueError("not a P-256 private key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    @property
    def kid(self) -> bytes:
        return key_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        der = self.private_key.sign(message, _ECDSA_DETERMINISTIC)
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:  # never print key material
        return f"SoftwareSigner(kid={self.kid.hex()})"


def point_bytes(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 64-byte ``x || y`` of a P-256 public key."""
    raw = public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return raw[1:]


def key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """Key id: the first 8 bytes of SHA-256 over the 64-byte ``x || y``."""
    return hashlib.sha256(point_bytes(public_key)).digest()[:KID_BYTES]


def holder_id(xy: bytes) -> bytes:
    """A holder's identity in revocation lists: first 16 bytes of SHA-256 over ``x || y``."""
    return hashlib.sha256(xy).digest()[:16]


@functools.lru_cache(maxsize=256)
def load_point(xy: bytes) -> ec.EllipticCurvePublicKey:
    """Load a P-256 public key from ``x || y``; raises ValueError if it is not on the curve.

    Cached: a car sees the same few phones again and again, and loading checks the point.
    """
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, b"\x04" + xy)


def cose_key(public_key: ec.EllipticCurvePublicKey, *, kid: bytes | None = None) -> dict[int, Any]:
    xy = point_bytes(public_key)
    key: dict[int, Any] = {KEY_KTY: KTY_EC2}
    if kid is not None:
        key[KEY_KID] = kid
        key[KEY_ALG] = ES256
    key[KEY_CRV] = CRV_P256
    key[KEY_X] = xy[:32]
    key[KEY_Y] = xy[32:]
    return key


def parse_cose_key(
    value: object, error: type[KeycoreError], *, with_kid: bool
) -> tuple[bytes, bytes | None]:
    """``(x || y, kid)`` from a P-256 COSE_Key map; the point is checked to be on the curve."""
    labels = {KEY_KTY, KEY_CRV, KEY_X, KEY_Y}
    if with_kid:
        labels |= {KEY_KID, KEY_ALG}
    key = as_map(value, error, labels, labels)
    as_int(key[KEY_KTY], error, KTY_EC2, KTY_EC2)
    as_int(key[KEY_CRV], error, CRV_P256, CRV_P256)
    xy = as_bytes(key[KEY_X], error, 32, 32) + as_bytes(key[KEY_Y], error, 32, 32)
    kid = None
    if with_kid:
        kid = as_bytes(key[KEY_KID], error, KID_BYTES, KID_BYTES)
        if as_int(key[KEY_ALG], error, -(2**31), 2**31) != ES256:
            raise error(Reason.ALGORITHM_MISMATCH, "key algorithm is not ES256")
    return xy, kid


def clear_caches() -> None:
    """Forget cached public keys and headers (benchmarks measure the first-contact cost)."""
    load_point.cache_clear()
    _HEADER_CACHE.clear()


def signature_to_der(signature: bytes) -> bytes:
    return encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )


def verify_es256(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` (raw ``r || s``) is a valid ES256 signature over ``message``."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        public_key.verify(signature_to_der(signature), message, _ECDSA)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Sign1:
    """A parsed, not yet verified, COSE_Sign1 message."""

    protected: bytes
    alg: int
    kid: bytes
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        return _sig_structure(self.protected, self.payload)


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def protected_header(kid: bytes, typ: str | int) -> bytes:
    return cbor2.dumps({HDR_ALG: ES256, HDR_KID: kid, HDR_TYP: typ})


def sign1(payload: bytes, *, typ: str | int, signer: Signer) -> bytes:
    """A tagged COSE_Sign1 over ``payload`` with alg, kid and typ in the protected header."""
    protected = protected_header(signer.kid, typ)
    signature = signer.sign(_sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, [protected, {}, payload, signature]))


def _read_bstr(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """A definite-length byte string in preferred serialization at ``pos``, or None."""
    if pos >= len(data):
        return None
    head = data[pos]
    if 0x40 <= head <= 0x57:
        length, pos = head - 0x40, pos + 1
    elif head == 0x58 and pos + 2 <= len(data) and data[pos + 1] >= 24:
        length, pos = data[pos + 1], pos + 2
    elif head == 0x59 and pos + 3 <= len(data) and data[pos + 1] > 0:
        length, pos = int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
    elif head == 0x5A and pos + 5 <= len(data) and data[pos + 1 : pos + 3] != b"\0\0":
        length, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
    else:  # 8-byte lengths never fit under any document's size cap
        return None
    end = pos + length
    if end > len(data):
        return None
    return data[pos:end], end


# tag 18, array of 4 — then protected bstr, empty map, payload bstr, 64-byte signature bstr
_SIGN1_HEAD = b"\xd2\x84"
_EMPTY_MAP = 0xA0
_SIG_HEAD = b"\x58\x40"


def parse_sign1(data: bytes, *, typ: str | int, max_size: int, error: type[KeycoreError]) -> Sign1:
    """Parse the envelope and protected header of a document of type ``typ``; no crypto yet.

    The envelope has one fixed shape, read byte by byte: anything else — other tags, indefinite
    lengths, non-minimal lengths, unprotected headers, trailing bytes — is malformed.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(Reason.MALFORMED, "not bytes")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:  # before anything is parsed or copied
        raise error(Reason.TOO_LARGE, f"{size} > {max_size} bytes")
    data = bytes(data)
    if not data.startswith(_SIGN1_HEAD):
        raise error(Reason.MALFORMED, "not a tagged 4-element COSE_Sign1")
    first = _read_bstr(data, 2)
    if first is None:
        raise error(Reason.MALFORMED, "protected header is not a byte string")
    protected, pos = first
    if pos >= len(data) or data[pos] != _EMPTY_MAP:
        raise error(Reason.MALFORMED, "unprotected header must be an empty map")
    second = _read_bstr(data, pos + 1)
    if second is None:
        raise error(Reason.MALFORMED, "payload is not a byte string")
    payload, pos = second
    if data[pos : pos + 2] != _SIG_HEAD or len(data) != pos + 2 + SIGNATURE_BYTES:
        raise error(Reason.MALFORMED, "signature is not a final 64-byte string")
    signature = data[pos + 2 :]
    header_typ, alg, kid = _protected_header(protected, error)
    if header_typ != typ:
        raise error(Reason.MALFORMED, "wrong document type")
    return Sign1(protected, alg, kid, payload, signature)


_HEADER_CACHE: dict[bytes, tuple[str | int, int, bytes]] = {}
_HEADER_CACHE_SIZE = 256


def _protected_header(protected: bytes, error: type[KeycoreError]) -> tuple[str | int, int, bytes]:
    """``(typ, alg, kid)`` of a protected header. Valid headers repeat, so they are cached."""
    cached = _HEADER_CACHE.get(protected)
    if cached is not None:
        return cached
    if len(protected) > MAX_PROTECTED_BYTES:
        raise error(Reason.MALFORMED, "protected header too long")
    header = as_map(
        loads_strict(protected, error, max_size=MAX_PROTECTED_BYTES),
        error,
        {HDR_ALG, HDR_KID, HDR_TYP},
        {HDR_ALG, HDR_KID, HDR_TYP},
    )
    typ = header[HDR_TYP]
    if type(typ) is not str and type(typ) is not int:
        raise error(Reason.MALFORMED, "typ is neither text nor a content format")
    result = (
        typ,
        as_int(header[HDR_ALG], error, -(2**63), 2**64 - 1),
        as_bytes(header[HDR_KID], error, KID_BYTES, KID_BYTES),
    )
    if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
        _HEADER_CACHE.clear()
    _HEADER_CACHE[protected] = result
    return result
