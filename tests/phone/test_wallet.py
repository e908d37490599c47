"""The offline key wallet: durable across reopening, one token per car, what is usable and what is
due for renewal at a given time, bad input refused before any write, damaged rows refused with
WalletCorrupt and left as they are, and token bytes never shown."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keycore import Role, SoftwareSigner, issue
from keycore.token import MAX_TOKEN_BYTES
from phone.wallet import KeyWallet, WalletCorrupt, WalletEntry, decode_row
from tests.conftest import DAY, NOW, OTHER_VIN, VIN, World

KEY_ID = "key-0001"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "wallet.db"


@pytest.fixture
def wallet(path: Path) -> Iterator[KeyWallet]:
    with KeyWallet.open(path) as opened:
        yield opened


def raw_rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM tokens ORDER BY vin").fetchall()


def test_a_token_put_is_there_after_reopening(world: World, path: Path) -> None:
    token = world.token()
    with KeyWallet.open(path) as wallet:
        put = wallet.put(KEY_ID, token, now=NOW)
    with KeyWallet.open(path) as wallet:
        assert wallet.get(VIN) == put
        assert wallet.entries() == [put]
    assert put == WalletEntry(VIN, KEY_ID, Role.OWNER, token, NOW, NOW + DAY, NOW)
    assert put.valid_until == "2027-01-16 08:00Z"


def test_one_token_per_car_the_newest_put_wins(world: World, wallet: KeyWallet) -> None:
    wallet.put(KEY_ID, world.token(), now=NOW)
    newer = wallet.put(KEY_ID, world.token(now=NOW + 10, expires=NOW + 2 * DAY), now=NOW + 10)
    other = wallet.put("key-0002", world.token(vin=OTHER_VIN), now=NOW)
    assert wallet.entries() == [other, newer]  # ordered by VIN
    assert wallet.remove(VIN)
    assert not wallet.remove(VIN)
    assert wallet.get(VIN) is None
    assert wallet.entries() == [other]


def test_usable_means_valid_at_the_given_time(world: World, wallet: KeyWallet) -> None:
    wallet.put(KEY_ID, world.token(not_before=NOW + 60), now=NOW)
    assert wallet.usable(VIN, NOW) is None  # not yet
    assert wallet.usable(VIN, NOW + 60) is not None
    assert wallet.usable(VIN, NOW + DAY - 1) is not None
    assert wallet.usable(VIN, NOW + DAY) is None  # expired
    assert wallet.usable(OTHER_VIN, NOW + 60) is None  # no token for that car


def test_tokens_are_due_ahead_of_expiry_or_past_half_their_life(
    world: World, wallet: KeyWallet
) -> None:
    week = wallet.put(KEY_ID, world.token(expires=NOW + 7 * DAY), now=NOW)
    valet = wallet.put("key-0002", world.token(Role.VALET, vin=OTHER_VIN), now=NOW)
    ahead = 3 * DAY
    assert wallet.due_for_refresh(NOW, ahead) == []
    assert wallet.due_for_refresh(NOW + DAY // 2 - 1, ahead) == []
    assert wallet.due_for_refresh(NOW + DAY // 2, ahead) == [valet]  # half of one day
    assert wallet.due_for_refresh(NOW + 4 * DAY - 1, ahead) == [valet]
    assert wallet.due_for_refresh(NOW + 4 * DAY, ahead) == [valet, week]  # three days left
    assert wallet.due_for_refresh(NOW + 30 * DAY, ahead) == [valet, week]  # lapsed offline
    with pytest.raises(ValueError, match="ahead_s"):
        wallet.due_for_refresh(NOW, -1)


@pytest.mark.parametrize(
    ("key_id", "token", "now"),
    [
        ("", b"token", NOW),
        ("no spaces", b"token", NOW),
        ("k" * 65, b"token", NOW),
        (7, b"token", NOW),
        (KEY_ID, "a text, not bytes", NOW),
        (KEY_ID, bytearray(b"x"), NOW),
        (KEY_ID, b"", NOW),
        (KEY_ID, b"\x00" * (MAX_TOKEN_BYTES + 1), NOW),
        (KEY_ID, b"\xd2\x84garbage", NOW),
        (KEY_ID, None, NOW),
        (KEY_ID, "valid", -1),
        (KEY_ID, "valid", 1.5),
    ],
)
def test_bad_input_is_refused_before_any_write(
    world: World, wallet: KeyWallet, path: Path, key_id: object, token: object, now: object
) -> None:
    held = wallet.put(KEY_ID, world.token(), now=NOW)
    before = raw_rows(path)
    if token == "valid":
        token = world.token(vin=OTHER_VIN)
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        wallet.put(key_id, token, now=now)  # type: ignore[arg-type]
    assert raw_rows(path) == before
    assert wallet.entries() == [held]


def test_a_token_signed_by_anyone_is_held_the_car_judges_it(wallet: KeyWallet) -> None:
    # The wallet reads claims and never verifies: a token from an unknown issuer is the car's
    # to refuse (and is refused there: test_client, "refuses the key").
    stranger = SoftwareSigner.generate()
    token = issue(signer=stranger, vin=VIN, holder=stranger.public_key, role=Role.OWNER,
                  now=NOW, expires=NOW + DAY)  # fmt: skip
    assert wallet.put(KEY_ID, token, now=NOW).vin == VIN


def test_repr_never_shows_the_token(world: World, wallet: KeyWallet) -> None:
    token = world.token()
    entry = wallet.put(KEY_ID, token, now=NOW)
    shown = repr(entry) + str(entry) + repr(wallet) + repr(wallet.entries())
    for spelling in (
        token.hex(),
        base64.urlsafe_b64encode(token).decode().rstrip("="),
        base64.b64encode(token).decode(),
        repr(token)[2:40],
    ):
        assert spelling not in shown
    assert KEY_ID in shown
    assert VIN in shown


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("token", b"\x00\x01"),
        ("token", b""),
        ("expires", NOW + 2 * DAY),  # the row says one window, the token another
        ("role", "pilot"),
        ("role", "guest"),
        ("key_id", "bad key id"),
        ("refreshed_at", -5),
        ("not_before", 2**62),
    ],
)
def test_a_damaged_row_raises_wallet_corrupt_and_is_left_alone(
    world: World, wallet: KeyWallet, path: Path, column: str, value: object
) -> None:
    wallet.put(KEY_ID, world.token(), now=NOW)
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE tokens SET {column} = ?", (value,))
    damaged = raw_rows(path)
    for read in (
        lambda: wallet.get(VIN),
        lambda: wallet.usable(VIN, NOW),
        wallet.entries,
        lambda: wallet.due_for_refresh(NOW, DAY),
    ):
        with pytest.raises(WalletCorrupt, match=VIN):
            read()
    assert raw_rows(path) == damaged


def test_a_wallet_from_a_newer_app_or_not_a_database_is_refused(path: Path) -> None:
    with KeyWallet.open(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(WalletCorrupt, match="newer than this app"):
        KeyWallet.open(path)
    garbage = path.with_name("garbage.db")
    garbage.write_bytes(b"not a database, not at all" * 100)
    with pytest.raises(WalletCorrupt, match="cannot open the wallet"):
        KeyWallet.open(garbage)
    assert garbage.read_bytes() == b"not a database, not at all" * 100


# property tests: whatever a row holds, reading it gives an entry or WalletCorrupt

_ANY = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.none(),
)


@given(st.lists(_ANY, min_size=0, max_size=9).map(tuple))
def test_decoding_any_row_gives_the_documented_error_only(row: tuple[object, ...]) -> None:
    with contextlib.suppress(WalletCorrupt):
        decode_row(row)


@given(token=st.binary(max_size=2 * MAX_TOKEN_BYTES), role=st.sampled_from(["owner", "x"]))
def test_random_token_bytes_in_a_stored_row_give_wallet_corrupt(token: bytes, role: str) -> None:
    with KeyWallet.open(":memory:") as wallet:
        wallet._db.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
            (VIN, KEY_ID, role, token, NOW, NOW + DAY, NOW),
        )
        with pytest.raises(WalletCorrupt):
            wallet.get(VIN)


@given(st.sampled_from(range(7)), _ANY)
def test_any_one_column_changed_in_a_valid_row_decodes_or_is_corrupt(
    world: World, column: int, value: object
) -> None:
    row = [VIN, KEY_ID, "owner", world_token(world), NOW, NOW + DAY, NOW]
    original = decode_row(tuple(row))
    row[column] = value
    try:
        entry = decode_row(tuple(row))
    except WalletCorrupt:
        return
    # only a change that keeps the row consistent can decode, and it decodes to that row
    assert (entry.key_id, entry.refreshed_at) == (row[1], row[6])
    assert (entry.vin, entry.role, entry.token) == (original.vin, original.role, original.token)


_TOKENS: dict[int, bytes] = {}


def world_token(world: World) -> bytes:
    """One token per world, made once: hypothesis runs the test many times."""
    return _TOKENS.setdefault(id(world), world.token())
