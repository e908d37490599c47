"""The staging stack: real detached processes brought up, found again through stack.json, used
through the edge proxies, hurt (a keyserver, the Redis primary) and taken down with nothing left.

Waits are bounded polls on what the processes answer; no assertion depends on how long a step
took.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from keycore.encoding import b64url_decode
from lab import cli
from lab.stack import process as stack_process
from lab.stack.spec import ProcessRecord, StackError, StackSpec
from lab.stack.stack import Stack

BOUND_S = 30.0  # a hang guard for polls; no assertion depends on it


def request(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    call = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=10) as answer:
            raw = answer.read()
            status: int = answer.status
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def register(stack: Stack, email: str | None = None) -> tuple[int, str]:
    email = email or f"{secrets.token_hex(6)}@example.com"
    status, _ = request(
        stack.urls["phones"] + "/v1/accounts",
        {"email": email, "password": "correct horse battery staple"},
    )
    return status, email


def login(stack: Stack, email: str) -> int:
    status, _ = request(
        stack.urls["phones"] + "/v1/sessions",
        {"email": email, "password": "correct horse battery staple"},
    )
    return status


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {BOUND_S} s: {what}"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    """Every stack a test brings up is taken down, whatever the test did."""
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.down()


def pids(stack: Stack) -> list[int]:
    return [r.pid for r in stack.state.processes if r.pid is not None]


def test_embedded_stack_up_status_call_restart_down(
    tmp_path: Path, stacks: list[Stack], capsys: pytest.CaptureFixture[str]
) -> None:
    stack = Stack.up(StackSpec(world=False), tmp_path)
    stacks.append(stack)
    assert stack.names() == ["keyserver-0", "phones-edge", "cars-edge"]
    assert stack.names("proxy") == ["phones-edge", "cars-edge"]

    assert cli.main(["stack", "status", "--dir", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["variant"] == "embedded"
    assert len(b64url_decode(shown["root_key"])) == 64
    secret = Path(shown["provisioning_secret_file"])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text()) >= 16
    # the keyservers read the published serving part; the root key stays in keys-admin
    assert (Path(shown["keys_dir"]) / "ring.json").exists()
    assert not (Path(shown["keys_dir"]) / "root.pem").exists()
    assert stat.S_IMODE((tmp_path / "keys-admin" / "root.pem").stat().st_mode) == 0o600
    assert Path(shown["events"]).exists()
    for process in shown["processes"]:
        assert process["alive"], process["name"]
        assert process["port"] not in (None, 0, 6379)
        assert Path(process["log"]).parent == tmp_path / "logs"
        status, text = request(process["metrics"])
        assert status == 200, process["name"]
        assert isinstance(text, bytes), process["name"]
    assert Stack.load(tmp_path).state == stack.state

    status, email = register(stack)
    assert status == 201
    assert login(stack, email) == 201
    assert stack.proxy("phones-edge").get()["stats"]["accepted"] >= 2

    with pytest.raises(StackError, match="a stack runs"):
        Stack.up(StackSpec(world=False), tmp_path)

    port = stack.process("keyserver-0").port
    old_pid = stack.process("keyserver-0").pid
    restarted = Stack.load(tmp_path).restart("keyserver-0")  # as a drill's action would
    assert restarted.port == port
    assert restarted.pid != old_pid
    assert gone(old_pid or 0)
    assert login(stack, email) == 201  # SQLite kept the account across the restart
    edge = stack.process("phones-edge")
    again = Stack.load(tmp_path).restart("phones-edge")
    assert (again.port, again.control) == (edge.port, edge.control)
    assert login(stack, email) == 201

    started = pids(Stack.load(tmp_path))
    assert restarted.pid in started
    stack.down()  # this instance has not seen the restart: stack.json has
    assert all(gone(pid) for pid in started)
    assert not any(p["alive"] for p in Stack.load(tmp_path).status())
    assert cli.main(["stack", "down", "--dir", str(tmp_path)]) == 0  # again: nothing to do
    assert "is down" in capsys.readouterr().out


def test_ha_stack_survives_a_primary_kill_and_a_keyserver_kill(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    stack = Stack.up(StackSpec(variant="ha", world=False), tmp_path)
    stacks.append(stack)
    assert stack.names("keyserver") == ["keyserver-0", "keyserver-1"]
    assert len(stack.names("sentinel")) == 3
    via = stack.process("redis-path").port
    assert stack.sentinel_master_port() == via  # the Sentinels know the primary by the proxy

    status, before = register(stack)
    assert status == 201
    replicated(stack)

    stack.kill("redis-0")
    new_master = stack.wait_for_master(other_than=via, timeout=BOUND_S)
    assert new_master == stack.process("redis-1").port
    eventually(lambda: register(stack)[0] == 201, "a write after the failover")
    assert login(stack, before) == 201  # the write from before the failover is there

    stack.kill("keyserver-0")  # the edge skips it: every call lands on keyserver-1
    for _ in range(4):
        assert register(stack)[0] == 201
    edge = stack.proxy("phones-edge").get()["stats"]["targets"]
    assert edge[0]["refused"] >= 1

    started = pids(stack)
    stack.down()
    assert all(gone(pid) for pid in started)
    assert not any(p["alive"] for p in stack.status())


def replicated(stack: Stack) -> None:
    """Wait until the replica has every write the primary has (asynchronous replication)."""
    port = stack.process("redis-0").port
    assert port is not None
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True) as db:

        def caught_up() -> bool:
            info = db.info("replication")
            replica = info.get("slave0")
            return isinstance(replica, dict) and replica["offset"] >= info["master_repl_offset"]

        eventually(caught_up, "the replica to catch up")


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
            eventually(lambda: cmdline.read_bytes() != b"", "sleep to finish its exec")
            ticks = stack_process.start_ticks(sleeper.pid)
            assert ticks is not None
            log = str(tmp_path / "x.log")
            ours = ProcessRecord("x", "proxy", ["/usr/bin/sleep"], {}, log, sleeper.pid, ticks)
            assert stack_process.is_running(ours)
            other_start = ProcessRecord("x", "proxy", ["sleep"], {}, log, sleeper.pid, ticks + 1)
            other_program = ProcessRecord("x", "proxy", ["redis"], {}, log, sleeper.pid, ticks)
            for record in (other_start, other_program):
                assert not stack_process.is_running(record)
                stack_process.terminate([record], timeout=1.0)
            assert sleeper.poll() is None  # still running: neither record was its
        finally:
            sleeper.kill()


def test_up_refuses_a_directory_that_is_not_a_stack(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(StackError, match=r"no stack\.json"):
        Stack.up(StackSpec(world=False), tmp_path)
    assert (tmp_path / "data").is_dir()  # untouched


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["up", "--variant", "cluster"], 2, "invalid choice"),
        (["up", "--keyservers", "0"], 2, "must be in 1"),
        (["up", "--keyservers", "two"], 2, "not an integer"),
        (["up", "--variant", "embedded", "--keyservers", "2"], 2, "exactly one keyserver"),
        (["status"], 1, "stack.json is missing"),
        (["down"], 1, "stack.json is missing"),
    ],
)
def test_bad_command_lines_exit_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    command = ["stack", argv[0], "--dir", str(tmp_path / "none"), *argv[1:]]
    try:
        result = cli.main(command)
    except SystemExit as exit_info:  # argparse's own refusals
        result = exit_info.code  # type: ignore[assignment]
    assert result == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("phonekey stack")


def test_stack_json_that_is_not_a_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text('{"variant": "embedded"}')
    with pytest.raises(StackError, match="not a stack record"):
        Stack.load(tmp_path)
    (tmp_path / "stack.json").write_text("[")
    with pytest.raises(StackError, match="not JSON"):
        Stack.load(tmp_path)


def test_the_world_starts_last_and_is_warm_before_up_returns(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    stack = Stack.up(StackSpec(cars=1, phones=2), tmp_path)
    stacks.append(stack)
    assert stack.names()[-1] == "world"
    world = stack.process("world")
    assert world.control is not None
    status, answer = request(world.control + "/status")
    assert status == 200
    assert answer["warm"] is True
    started = pids(stack)
    stack.down()
    assert all(gone(pid) for pid in started)
