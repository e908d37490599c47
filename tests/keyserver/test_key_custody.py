"""Key custody: the root key stays in an admin directory, keyservers hold the serving part, a
published rotation is served without a restart, and nothing mints keys by accident."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from keycore import Action, KeyStatus, RevocationState, TrustStore, verify
from keycore.cose import parse_sign1
from keycore.errors import InvalidToken
from keycore.token import MAX_TOKEN_BYTES, TYP_KEY_TOKEN
from keyserver import cli
from keyserver.app import KEYRING, METRICS, create_app
from keyserver.config import Config, build
from keyserver.keyring import KeyRingStore
from keyserver.keyring_reload import ServedKeyRing
from lab.stack.spec import DEFAULT_DIR
from tests.keyserver.keys_harness import TOKEN, VIN, Api, Clock, token_bytes
from vehicle_agent.config import AgentConfig

HANG_GUARD_S = 10  # a bound on waiting for a reload, never a timing assertion


def keys(*args: str) -> None:
    assert cli.main(["keys", *args]) == 0


def kid_of(token: str) -> bytes:
    message = parse_sign1(
        token_bytes(token), typ=TYP_KEY_TOKEN, max_size=MAX_TOKEN_BYTES, error=InvalidToken
    )
    return message.kid


async def served_sequence(served: ServedKeyRing, sequence: int) -> None:
    async with asyncio.timeout(HANG_GUARD_S):
        await served.wait_for(lambda: served.trust_sequence >= sequence)


def serving_config(tmp_path: Path, serving: Path) -> Config:
    return build({"data_dir": str(tmp_path / "data"), "key_dir": str(serving), "key_poll_s": 0.02})


@pytest.fixture
def published(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """An admin directory with the root key, and a serving directory published from it."""
    admin, serving = tmp_path / "admin", tmp_path / "serving"
    keys("--dir", str(admin), "init")
    keys("--dir", str(admin), "publish", str(serving))
    capsys.readouterr()
    return admin, serving


async def test_a_keyserver_without_the_root_key_serves_a_rotation_published_later(
    tmp_path: Path, published: tuple[Path, Path], aiohttp_client: Any, clock: Clock
) -> None:
    admin, serving = published
    root_pem = (admin / "root.pem").read_bytes()
    assert not (serving / "root.pem").exists()
    assert all(root_pem.splitlines()[1] not in p.read_bytes() for p in serving.iterdir())

    app = create_app(serving_config(tmp_path, serving))
    api = Api(app, await aiohttp_client(app), clock)
    owner = await api.person("owner")
    await api.vehicle(owner)
    first = await api.owner_key(owner)
    before = KeyRingStore(admin).load()
    assert kid_of(first["token"]) == before.ring.active.kid
    car = TrustStore(before.root_key).apply(before.trust_update)  # the car, before the rotation

    keys("--dir", str(admin), "rotate")
    keys("--dir", str(admin), "publish", str(serving))
    await served_sequence(app[KEYRING], 2)

    after = KeyRingStore(admin).load()
    assert after.ring.active.kid != before.ring.active.kid
    response = await api.client.get("/v1/trust-update")
    assert response.headers["PK-Trust-Sequence"] == "2"
    assert await response.read() == after.trust_update
    reply = await api.call(owner, "POST", TOKEN, key_id=first["key_id"])
    assert reply.status == 200, reply.data
    assert kid_of(reply.body["token"]) == after.ring.active.kid
    # the new key was published as "next" before it signed: a car that missed the new update
    # still opens for the new token, and the retired key's tokens stay good until they expire
    for trust in (car, car.apply(after.trust_update)):
        for token in (reply.body["token"], first["token"]):
            verify(
                token_bytes(token),
                vin=VIN,
                action=Action.UNLOCK,
                now=clock.now,
                trust=trust,
                revocations=RevocationState(VIN),
            )
    registry = app[METRICS].registry
    assert registry.get_sample_value("keyserver_keyring_reloads_total", {"outcome": "loaded"}) == 1
    assert registry.get_sample_value("keyserver_trust_sequence") == 2


async def test_a_bad_publish_is_refused_in_one_line_and_the_ring_served_stays(
    tmp_path: Path,
    published: tuple[Path, Path],
    aiohttp_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin, serving = published
    app = create_app(serving_config(tmp_path, serving))
    client = await aiohttp_client(app)
    served: ServedKeyRing = app[KEYRING]
    served_update = served.trust_update
    keys("--dir", str(admin), "rotate")
    rotated = KeyRingStore(admin).load()
    (serving / "trust-update.cbor").write_bytes(rotated.trust_update)  # ring.json left behind

    caplog.set_level(logging.WARNING, logger="keyserver.keyring")
    async with asyncio.timeout(HANG_GUARD_S):
        await served.wait_for(lambda: served.refused == 1)
    refusals = [r for r in caplog.records if r.getMessage().startswith("key ring not reloaded")]
    assert len(refusals) == 1
    assert "has sequence 2, ring.json says 1" in refusals[0].fields["error"]  # type: ignore[attr-defined]
    response = await client.get("/v1/trust-update")
    assert await response.read() == served_update
    assert response.headers["PK-Trust-Sequence"] == "1"
    assert served.check() is False  # looked at again unchanged: no second line
    assert len([r for r in caplog.records if r.name == "keyserver.keyring"]) == 1

    keys("--dir", str(admin), "publish", str(serving))  # the whole serving part repairs it
    await served_sequence(served, 2)
    assert served.ring.active.kid == rotated.ring.active.kid


@pytest.mark.parametrize("case", ["another root", "an older update"])
def test_a_reload_never_changes_the_root_or_goes_back(
    tmp_path: Path,
    published: tuple[Path, Path],
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin, serving = published
    store = KeyRingStore(serving)
    registry = CollectorRegistry()
    served = ServedKeyRing(store, store.load(), registry)
    assert served.check() is False  # the first look reads what is served: unchanged
    if case == "another root":
        other = tmp_path / "other"
        keys("--dir", str(other), "init")
        for name in ("root-public.pem", "ring.json", "trust-update.cbor"):
            (serving / name).write_bytes((other / name).read_bytes())
        for pem in other.glob("issuer-*.pem"):
            (serving / pem.name).write_bytes(pem.read_bytes())
        wanted = "is not the root served"
    else:
        old = {n: (serving / n).read_bytes() for n in ("ring.json", "trust-update.cbor")}
        keys("--dir", str(admin), "rotate")
        keys("--dir", str(admin), "publish", str(serving))
        assert served.check() is True
        for name, data in old.items():  # an old backup copied back by hand
            (serving / name).write_bytes(data)
        wanted = "is older than the one served"
    before = served.state

    def refused() -> float | None:
        return registry.get_sample_value("keyserver_keyring_reloads_total", {"outcome": "refused"})

    caplog.set_level(logging.WARNING, logger="keyserver.keyring")
    assert served.check() is False  # a first failure may be a publish in progress: not judged
    assert refused() == 0
    assert served.check() is False  # the same directory again: refused
    assert refused() == 1
    (line,) = caplog.records
    assert wanted in line.fields["error"]  # type: ignore[attr-defined]
    assert served.state is before


async def test_publish_refuses_another_root_or_an_older_update(
    tmp_path: Path, published: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, serving = published
    other = tmp_path / "other"
    keys("--dir", str(other), "init")
    before = {p.name: p.read_bytes() for p in serving.iterdir()}
    assert cli.main(["keys", "--dir", str(other), "publish", str(serving)]) == 1
    assert "serves root" in capsys.readouterr().err
    keys("--dir", str(admin), "rotate")
    keys("--dir", str(admin), "publish", str(serving))
    backup = tmp_path / "backup"
    keys("--dir", str(serving), "publish", str(backup))  # a copy of the serving part
    capsys.readouterr()
    keys("--dir", str(admin), "rotate")
    keys("--dir", str(admin), "publish", str(serving))
    now = {p.name: p.read_bytes() for p in serving.iterdir()}
    assert now != before
    assert cli.main(["keys", "--dir", str(backup), "publish", str(serving)]) == 1
    assert "newer than this ring's 2" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in serving.iterdir()} == now
    # and a serving directory cannot rotate: it has no root private key
    assert cli.main(["keys", "--dir", str(serving), "rotate"]) == 1
    assert "no root private key" in capsys.readouterr().err


# -- no key ring is ever made by accident ----------------------------------------------------


async def test_an_explicit_key_dir_without_a_ring_stops_start_up_in_one_line(
    tmp_path: Path,
) -> None:
    typo = tmp_path / "kyes"
    env = {
        **os.environ,
        "PHONEKEY_DATA_DIR": str(tmp_path / "data"),
        "PHONEKEY_KEY_DIR": str(typo),
        "PHONEKEY_PORT": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyserver.cli", "serve",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):  # a hang guard, not a timing assertion
        out, err = await process.communicate()
    assert process.returncode == 2
    (line,) = err.decode().splitlines()
    assert line.startswith(f"keyserver: no key ring in {typo} (key_dir is set):")
    assert "keyserver keys --dir ADMIN_DIR init" in line
    assert out == b""
    assert not typo.exists()  # nothing minted, not even the directory


async def test_the_default_ring_is_made_once_and_start_up_names_the_keys_it_serves(
    tmp_path: Path, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyserver.keyring")
    config = build({"data_dir": str(tmp_path)})
    await aiohttp_client(create_app(config))
    state = KeyRingStore(tmp_path / "keys").load()
    fields = [(r.getMessage(), r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    created, serving = fields
    assert created == (
        "key ring created",
        {
            "key_dir": str(tmp_path / "keys"),
            "root_kid": state.root_kid.hex(),
            "why": "first start without key_dir (zero-configuration default)",
        },
    )
    assert serving[0] == "serving key ring"
    assert serving[1]["root_kid"] == state.root_kid.hex()
    assert serving[1]["active"] == [state.ring.active.kid.hex()]
    assert serving[1]["next"] == [
        k.kid.hex() for k in state.ring.keys if k.status is KeyStatus.NEXT
    ]
    assert serving[1]["trust_sequence"] == 1

    caplog.clear()
    await aiohttp_client(create_app(config))  # a restart serves the same ring, makes none
    assert [r.getMessage() for r in caplog.records] == ["serving key ring"]
    assert KeyRingStore(tmp_path / "keys").load().root_kid == state.root_kid


async def test_keys_and_serve_agree_on_the_default_directory(
    tmp_path: Path,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    keys("init")  # no --dir, no settings: where `keyserver serve` looks by default
    made = KeyRingStore(Config().keys_path).load()
    app = create_app(build({}))
    await aiohttp_client(app)
    assert app[KEYRING].state.root_kid == made.root_kid
    monkeypatch.setenv("PHONEKEY_DATA_DIR", str(tmp_path / "elsewhere"))
    keys("init")
    assert (tmp_path / "elsewhere" / "keys" / "ring.json").exists()
    capsys.readouterr()


# -- secrets at rest -----------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_databases_and_private_keys_are_the_owners_only(
    tmp_path: Path, published: tuple[Path, Path], aiohttp_client: Any
) -> None:
    admin, serving = published
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "keyserver.db").touch(mode=0o644)  # made by an older keyserver: tightened
    await aiohttp_client(create_app(serving_config(tmp_path, serving)))
    databases = [data / "keyserver.db", data / "journal.db"]
    databases += [p for p in data.iterdir() if p.name.endswith(("-wal", "-shm"))]
    assert len(databases) > 2
    for path in databases:
        assert mode(path) == 0o600, path.name
    for directory in (admin, serving):
        assert mode(directory) == 0o700
        secrets = [directory / "root.pem", *directory.glob("issuer-*.pem")]
        for path in secrets:
            if path.exists():
                assert mode(path) == 0o600, path
        assert len([p for p in secrets if p.exists()]) == (3 if directory == admin else 2)
    assert json.loads((serving / "ring.json").read_text())["trust_sequence"] == 1


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout"
)
def test_the_default_data_and_stack_directories_are_ignored_by_git() -> None:
    defaults = [
        Config().sqlite_path,
        Config().journal_path,
        Config().keys_path / "root.pem",
        AgentConfig.__dataclass_fields__["state_path"].default,
        DEFAULT_DIR / "secret",
        DEFAULT_DIR / "keys-admin" / "root.pem",
        Path("deploy") / ".env",
    ]
    for path in defaults:
        assert isinstance(path, Path)
        result = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", str(path)], cwd=REPO, check=False
        )
        assert result.returncode == 0, f"{path} is not ignored by git"
