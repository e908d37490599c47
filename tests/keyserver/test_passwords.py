"""scrypt password hashes: verify, refuse, never crash on a damaged hash."""

from __future__ import annotations

import pytest

from keyserver.passwords import WeakPassword, hash_password, verify_password


def test_hash_and_verify() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$14$8$1$")
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert hash_password("correct horse battery") != stored  # salted


@pytest.mark.parametrize("password", ["short", "x" * 1025])
def test_policy(password: str) -> None:
    with pytest.raises(WeakPassword):
        hash_password(password)


@pytest.mark.parametrize(
    "stored",
    ["", "scrypt", "bcrypt$14$8$1$AA$AA", "scrypt$99$8$1$AA$AA", "scrypt$14$8$1$!!$AA", "a$b$c"],
)
def test_damaged_hash_is_a_mismatch_not_an_error(stored: str) -> None:
    assert not verify_password("correct horse battery", stored)


def test_oversized_password_is_refused_before_hashing() -> None:
    stored = hash_password("correct horse battery")
    assert not verify_password("x" * 100_000, stored)
