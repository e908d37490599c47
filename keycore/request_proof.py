"""Device proofs on API requests: the phone's device key signs what it asks the keyserver to do.

Operations that change who can open a car, and remote commands, need more than a bearer session:
the device key signs ``context ‖ device id ‖ 0 ‖ method ‖ 0 ‖ path ‖ 0 ‖ SHA-256(body) ‖
timestamp (8 bytes, big-endian) ‖ nonce``. The
server refuses a stale timestamp and a nonce it has seen (single use is the caller's store).

Header form (``PK-Device-Proof``): ``device=<id>, ts=<unix seconds>, nonce=<b64url>, sig=<b64url>``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from keycore import cose
from keycore.encoding import b64url_decode, b64url_encode
from keycore.errors import InvalidProof, Reason

REQUEST_CONTEXT = b"phonekey/request/v1\x00"
HEADER = "PK-Device-Proof"
MAX_HEADER_CHARS = 512
NONCE_MIN, NONCE_MAX = 16, 32
DEFAULT_MAX_SKEW = 60

_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FIELD = re.compile(r" *([a-z]+)=([A-Za-z0-9_=-]+) *")
_FIELDS = ("device", "ts", "nonce", "sig")


@dataclass(frozen=True, slots=True)
class RequestProof:
    device_id: str
    timestamp: int
    nonce: bytes
    signature: bytes


def request_message(
    device_id: str, method: str, path: str, body: bytes, timestamp: int, nonce: bytes
) -> bytes:
    return b"".join(
        (
            REQUEST_CONTEXT,
            device_id.encode("ascii"),
            b"\x00",
            method.upper().encode("ascii"),
            b"\x00",
            path.encode("utf-8"),
            b"\x00",
            hashlib.sha256(body).digest(),
            timestamp.to_bytes(8, "big"),
            nonce,
        )
    )


def sign_request(
    device: cose.Signer,
    *,
    device_id: str,
    method: str,
    path: str,
    body: bytes,
    timestamp: int,
    nonce: bytes | None = None,
) -> str:
    """The ``PK-Device-Proof`` header value for one request (a fresh random nonce by default)."""
    nonce = secrets.token_bytes(NONCE_MIN) if nonce is None else nonce
    signature = device.sign(request_message(device_id, method, path, body, timestamp, nonce))
    nonce_text, signature_text = b64url_encode(nonce), b64url_encode(signature)
    return f"device={device_id}, ts={timestamp}, nonce={nonce_text}, sig={signature_text}"


def parse_request_proof(header: str) -> RequestProof:
    """Parse a header value strictly; raises InvalidProof(malformed)."""
    if not isinstance(header, str) or len(header) > MAX_HEADER_CHARS:
        raise InvalidProof(Reason.MALFORMED, "proof header missing or too long")
    fields: dict[str, str] = {}
    for part in header.split(","):
        match = _FIELD.fullmatch(part)
        if match is None or match.group(1) in fields:
            raise InvalidProof(Reason.MALFORMED, "proof header fields")
        fields[match.group(1)] = match.group(2)
    if sorted(fields) != sorted(_FIELDS):
        raise InvalidProof(Reason.MALFORMED, "proof header needs device, ts, nonce and sig")
    if not _DEVICE_ID.fullmatch(fields["device"]) or not fields["ts"].isdigit():
        raise InvalidProof(Reason.MALFORMED, "device id or timestamp")
    nonce = _unb64(fields["nonce"])
    signature = _unb64(fields["sig"])
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX or len(signature) != cose.SIGNATURE_BYTES:
        raise InvalidProof(Reason.MALFORMED, "nonce or signature length")
    timestamp = int(fields["ts"])
    if timestamp >= 2**63:
        raise InvalidProof(Reason.MALFORMED, "timestamp out of range")
    return RequestProof(fields["device"], timestamp, nonce, signature)


def verify_request_proof(
    proof: RequestProof,
    *,
    public_key: ec.EllipticCurvePublicKey,
    method: str,
    path: str,
    body: bytes,
    now: float,
    max_skew: float = DEFAULT_MAX_SKEW,
) -> None:
    """Raise InvalidProof unless the proof is fresh (``stale`` otherwise) and signed by the key
    for exactly this method, path and body (``bad_proof``). The nonce's single use is the
    caller's to enforce, after this check passes."""
    if abs(now - proof.timestamp) > max_skew:
        raise InvalidProof(Reason.STALE, "timestamp outside the allowed skew")
    message = request_message(proof.device_id, method, path, body, proof.timestamp, proof.nonce)
    if not cose.verify_es256(public_key, proof.signature, message):
        raise InvalidProof(Reason.BAD_PROOF)


def _unb64(text: str) -> bytes:
    try:
        return b64url_decode(text)
    except ValueError as error:
        raise InvalidProof(Reason.MALFORMED, str(error)) from None
