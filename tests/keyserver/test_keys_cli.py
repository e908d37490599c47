"""`keyserver keys init | rotate | list | retire`: files, permissions and the trust-store update."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keycore import (
    Action,
    KeyStatus,
    RevocationState,
    Role,
    SoftwareSigner,
    TrustStore,
    issue,
    verify,
)
from keyserver import cli
from keyserver.keyring import KeyRingStore


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def listing(capsys: pytest.CaptureFixture[str], directory: Path) -> dict[str, object]:
    code, out, _ = run(capsys, "keys", "--dir", str(directory), "list", "--json")
    assert code == 0
    result: dict[str, object] = json.loads(out)
    return result


def test_init_writes_private_keys_0600_and_a_verifiable_update(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    code, out, _ = run(capsys, "keys", "--dir", str(keys), "init")
    assert code == 0
    assert "trust-store update sequence 1" in out
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    pems = sorted(p for p in keys.glob("*.pem") if p.name != "root-public.pem")
    assert len(pems) == 3  # root, active, next
    for pem in pems:
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (keys / "root-public.pem").read_bytes()
    for pem in pems:  # no private key material is ever printed
        body = pem.read_text().splitlines()[1]
        assert body not in out
    state = KeyRingStore(keys).load()
    trust = state.trust_store()
    assert trust.sequence == 1
    assert set(trust.keys) == {k.kid for k in state.ring.keys}


def test_init_twice_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "keys", "--dir", str(tmp_path), "init")[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = run(capsys, "keys", "--dir", str(tmp_path), "init")
    assert code == 1
    assert err.strip() == f"keyserver: a key ring already exists in {tmp_path}"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_rotate_and_retire_reach_a_car_that_only_sees_updates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "keys", "--dir", str(tmp_path), "init")[0] == 0
    first = KeyRingStore(tmp_path).load()
    car = first.trust_store()
    old_active = first.ring.active
    vin = "5YJ3E1EA7KF000001"
    phone = SoftwareSigner.generate()
    now = old_active.not_before + 10
    old_token = issue(
        signer=old_active.signer,
        vin=vin,
        holder=phone.public_key,
        role=Role.OWNER,
        now=now,
        expires=now + 3600,
    )

    assert run(capsys, "keys", "--dir", str(tmp_path), "rotate")[0] == 0
    second = KeyRingStore(tmp_path).load()
    assert second.trust_sequence == 2
    statuses = {k.kid: k.status for k in second.ring.keys}
    assert statuses[old_active.kid] is KeyStatus.RETIRED
    car = car.apply(second.trust_update)
    # The retired key's tokens still open the car until they expire.
    verify(
        old_token,
        vin=vin,
        action=Action.UNLOCK,
        now=now + 60,
        trust=car,
        revocations=RevocationState(vin),
    )

    # Retiring the active key is refused; retiring the old one drops it from the next update.
    code, _, err = run(
        capsys, "keys", "--dir", str(tmp_path), "retire", second.ring.active.kid.hex()
    )
    assert code == 1
    assert "rotate" in err
    assert run(capsys, "keys", "--dir", str(tmp_path), "retire", old_active.kid.hex())[0] == 0
    third = KeyRingStore(tmp_path).load()
    assert old_active.kid not in {k.kid for k in third.ring.keys}
    assert not (tmp_path / f"issuer-{old_active.kid.hex()}.pem").exists()
    car = car.apply(third.trust_update)
    assert car.lookup(old_active.kid) is None
    # An old update can never bring the dropped key back.
    with pytest.raises(Exception, match="invalid trust-store update"):
        car.apply(second.trust_update)
    assert listing(capsys, tmp_path)["trust_sequence"] == 3


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "ring.json").write_text("{not json"), "unreadable key ring"),
        (lambda d: (d / "ring.json").unlink(), "ring.json missing"),
        (
            lambda d: (d / "root-public.pem").write_bytes(
                SoftwareSigner.generate().public_key.public_bytes(
                    Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
                )
            ),
            "trust-update.cbor does not verify under the root key (unknown_key)",
        ),
        (
            lambda d: (d / "trust-update.cbor").write_bytes(b"\x00"),
            "trust-update.cbor does not verify under the root key (malformed)",
        ),
    ],
)
def test_damaged_ring_gives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object, message: str
) -> None:
    assert run(capsys, "keys", "--dir", str(tmp_path), "init")[0] == 0
    damage(tmp_path)  # type: ignore[operator]
    code, out, err = run(capsys, "keys", "--dir", str(tmp_path), "list")
    assert code == 1
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_trust_store_from_state_matches_a_fresh_car(tmp_path: Path) -> None:
    state = KeyRingStore(tmp_path).init(
        now=1_800_000_000, key_lifetime=86_400 * 30, max_token_lifetime=86_400
    )
    fresh = TrustStore(state.root_key).apply(state.trust_update)
    assert fresh.keys.keys() == state.trust_store().keys.keys()


def test_retire_rejects_a_bad_kid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keys", "--dir", str(tmp_path), "init")[0] == 0
    code, _, err = run(capsys, "keys", "--dir", str(tmp_path), "retire", "zz")
    assert (code, err.strip()) == (1, "keyserver: not a key id: 'zz'")
    code, _, err = run(capsys, "keys", "--dir", str(tmp_path), "retire", "00" * 8)
    assert (code, err.strip()) == (1, f"keyserver: no key {'00' * 8} in the ring")
