"""RedisStore against a redis-server of its own that the test hangs, kills or locks.

A failing call raises StoreUnavailable and never hangs (asyncio.timeout is only a hang guard,
not a timing assertion), says whether a write may have been applied, and the same store works
again once the server is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from keyserver.errors import StoreUnavailable
from keyserver.models import Account, Device, NonceClaim, Pairing, PairingResult, Session
from keyserver.store.redis import RedisStore
from lab.processes.redis_server import RedisServer

NOW = 1_800_000_000
ACCOUNT = Account("acc1", "user1@example.org", "scrypt$…", NOW)
SESSION = Session(b"\x01" * 32, "acc1", NOW + 60)
HANG_GUARD = 5.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as running:
        yield running


async def connect(server: RedisServer, url: str | None = None) -> RedisStore:
    return await RedisStore.connect(
        url or server.url, prefix="t:", socket_timeout=0.2, connect_timeout=0.2
    )


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    opened = await connect(server)
    try:
        yield opened
    finally:
        await opened.close()


async def unavailable(call: Awaitable[object]) -> StoreUnavailable:
    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(StoreUnavailable) as caught:
            await call
    return caught.value


async def test_a_hung_server_fails_reads_and_the_pool_recovers(
    server: RedisServer, store: RedisStore
) -> None:
    await store.create_account(ACCOUNT)
    server.pause()
    try:
        error = await unavailable(store.account("acc1"))
        assert not error.may_have_succeeded
        error = await unavailable(store.ping())
        assert not error.may_have_succeeded
    finally:
        server.resume()
    assert await store.account("acc1") == ACCOUNT
    await store.ping()


async def test_a_write_sent_to_a_hung_server_may_have_succeeded(
    server: RedisServer, store: RedisStore
) -> None:
    await store.ping()  # one pooled connection, ready: the next command goes straight out
    server.pause()
    try:
        error = await unavailable(store.put_session(SESSION))
        assert error.may_have_succeeded
    finally:
        server.resume()
    await store.put_session(SESSION)
    assert await store.session(SESSION.token_hash, now=NOW) == SESSION


async def test_a_write_that_never_got_a_ready_connection_was_not_applied(
    server: RedisServer, store: RedisStore
) -> None:
    server.pause()  # the kernel still accepts the connection; the handshake gets no answer
    try:
        error = await unavailable(store.put_session(SESSION))
        assert not error.may_have_succeeded
    finally:
        server.resume()
    assert await store.session(SESSION.token_hash, now=NOW) is None


async def test_a_killed_server_refuses_reads_and_writes(
    server: RedisServer, store: RedisStore
) -> None:
    await store.create_account(ACCOUNT)
    server.kill()
    read = await unavailable(store.account("acc1"))
    write = await unavailable(store.put_session(SESSION))
    assert not read.may_have_succeeded
    assert not write.may_have_succeeded  # connection refused: nothing was sent


async def test_an_unreachable_server_at_start_is_not_fatal(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    server.stop()
    store = await connect(server)  # the port is closed now
    try:
        error = await unavailable(store.ping())
        assert not error.may_have_succeeded
    finally:
        await store.close()


async def test_failure_messages_carry_no_secret(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", extra_args=["--requirepass", "right"]) as server:
        url = f"redis://:hunter2@127.0.0.1:{server.port}/0"
        store = await connect(server, url)
        try:
            error = await unavailable(store.create_account(ACCOUNT))
        finally:
            await store.close()
    assert "hunter2" not in str(error)
    assert not error.may_have_succeeded


async def test_keys_stay_under_the_prefix_and_expire_only_as_garbage(
    server: RedisServer, store: RedisStore
) -> None:
    long_ago = Session(b"\x02" * 32, "acc1", 1_000)  # long expired by the server's clock
    await store.create_account(ACCOUNT)
    await store.put_session(SESSION)
    await store.put_session(long_ago)
    await store.put_pairing(Pairing("VIN1", b"code", 1_000, 3))
    await store.claim_nonce("dev1", b"n", now=NOW, expires_at=NOW + 300)
    await store.hit("login:acc1", now=NOW, window=60, limit=5)

    # validity follows the caller's clock only: the store never reads one
    assert await store.session(long_ago.token_hash, now=999) == long_ago
    assert await store.try_pairing("VIN1", b"code", now=999) is PairingResult.PAIRED

    raw = Redis.from_url(server.url, decode_responses=True)
    try:
        keys = sorted(map(str, await raw.keys("*")))
        assert keys
        assert all(key.startswith("t:") for key in keys)
        assert await raw.ttl(f"t:account:{ACCOUNT.account_id}") == -1  # kept for good
        for key in keys:
            if key.startswith(("t:session:", "t:nonce:", "t:hit:")):
                assert await raw.ttl(key) > 0, key
    finally:
        await raw.aclose()


# refresh_context: concurrent calls share round trips (one pipeline of scripts)

DEVICE = Device("dev1", "acc1", b"\x01" * 64, "phone", NOW)


def nonce_claim(nonce: bytes) -> NonceClaim:
    return NonceClaim("proof:dev1", nonce, NOW + 61, DEVICE.public_key)


async def refresh(store: RedisStore, nonce: bytes) -> bool | None:
    context = await store.refresh_context(
        SESSION.token_hash, device_id="dev1", key_id=None, now=NOW, claim=nonce_claim(nonce)
    )
    assert context.session == SESSION
    assert context.device == DEVICE
    return context.nonce_fresh


async def test_concurrent_refresh_contexts_each_get_their_own_answer(store: RedisStore) -> None:
    await store.put_session(SESSION)
    await store.add_device(DEVICE)
    nonces = [bytes([n % 50]) * 16 for n in range(100)]  # 50 nonces, each sent twice
    async with asyncio.timeout(HANG_GUARD):
        fresh = await asyncio.gather(*(refresh(store, nonce) for nonce in nonces))
    for nonce in set(nonces):
        assert sorted(f for n, f in zip(nonces, fresh, strict=True) if n == nonce) == [
            False,
            True,
        ]


async def test_refresh_context_survives_a_flushed_script_cache(
    server: RedisServer, store: RedisStore
) -> None:
    await store.put_session(SESSION)
    await store.add_device(DEVICE)
    assert await refresh(store, b"a" * 16) is True
    raw = Redis.from_url(server.url)
    try:
        await raw.script_flush()  # as after a restart: Redis no longer knows the script
    finally:
        await raw.aclose()
    async with asyncio.timeout(HANG_GUARD):
        fresh = await asyncio.gather(refresh(store, b"b" * 16), refresh(store, b"a" * 16))
    assert fresh == [True, False]  # sent once more after loading: spent once, not twice


async def test_concurrent_refresh_contexts_sent_to_a_hung_server_may_have_succeeded(
    server: RedisServer, store: RedisStore
) -> None:
    await store.put_session(SESSION)
    await store.add_device(DEVICE)
    server.pause()
    try:
        errors = await asyncio.gather(
            *(unavailable(refresh(store, bytes([n]) * 16)) for n in range(8))
        )
        assert all(error.may_have_succeeded for error in errors)
    finally:
        server.resume()
    assert await refresh(store, b"z" * 16) is True  # the store works again


async def test_refresh_contexts_that_never_reached_a_killed_server_were_not_applied(
    server: RedisServer, store: RedisStore
) -> None:
    server.kill()
    errors = await asyncio.gather(*(unavailable(refresh(store, bytes([n]) * 16)) for n in range(4)))
    assert not any(error.may_have_succeeded for error in errors)
