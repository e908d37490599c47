"""Password hashing with scrypt (RFC 7914) from the standard library, compared in constant time.

Stored form: ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``, so parameters can be raised later
and old hashes still verify. Hashing costs ~50 ms of CPU: call it off the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from keycore.encoding import b64url_decode, b64url_encode
from keyserver.errors import KeyserverError

LOG2_N, R, P = 14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MAX_PASSWORD_BYTES = 1024  # bounded before hashing: scrypt cost must not scale with input
MIN_PASSWORD_CHARS = 10


# A well-formed hash that no password matches (its digest is all zeros): verifying against it
# costs what a real check costs, so a login for an unknown e-mail takes as long as a wrong password.
DECOY_HASH = "$".join(["scrypt", str(LOG2_N), str(R), str(P), "A" * 22, "A" * 43])


class WeakPassword(KeyserverError, ValueError):
    pass


def check_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise WeakPassword(f"a password has at least {MIN_PASSWORD_CHARS} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise WeakPassword(f"a password has at most {MAX_PASSWORD_BYTES} bytes")


def hash_password(password: str) -> str:
    check_policy(password)
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password.encode(), salt, LOG2_N, R, P)
    return "$".join(
        ["scrypt", str(LOG2_N), str(R), str(P), b64url_encode(salt), b64url_encode(digest)]
    )


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored``; False for a mismatch or a malformed hash."""
    encoded = password.encode()
    if len(encoded) > MAX_PASSWORD_BYTES:
        return False
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or not (10 <= int(log2_n) <= 20 and 1 <= int(r) <= 16):
            return False
        expected = b64url_decode(digest)
        actual = _scrypt(encoded, b64url_decode(salt), int(log2_n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=HASH_BYTES
    )
