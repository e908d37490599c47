"""The agent's durable state: survives reopen and kill -9; commands at most once; audit outbox."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keycore import RevocationLedger, RevocationState, SoftwareSigner, TrustedClock
from tests.conftest import DAY, NOW, VIN, World
from vehicle_agent.errors import StateError
from vehicle_agent.state import AgentState, Identity


def identity(world: World) -> Identity:
    return Identity(VIN, SoftwareSigner.generate(), world.root.public_key, "http://127.0.0.1:1")


def test_everything_survives_a_reopen(tmp_path: Path, world: World) -> None:
    path = tmp_path / "agent.db"
    state = AgentState.open(path)
    ident = identity(world)
    state.set_identity(ident)
    state.save_trust(world.trust)
    ledger = RevocationLedger(VIN)
    ledger.revoke_token(b"\x01" * 16, NOW + DAY)
    revocations = RevocationState(VIN).apply(
        ledger.document(world.issuer, now=NOW), trust=world.trust, now=NOW
    )
    state.save_revocations(revocations)
    clock = TrustedClock.provisioned(now=NOW, mono=10.0, boot_id="boot-a")
    state.save_clock(clock, mono=20.0)
    state.close()

    state = AgentState.open(path)
    again = state.identity()
    assert again.vin == VIN
    assert again.vehicle_key.kid == ident.vehicle_key.kid
    assert again.keyserver_url == ident.keyserver_url
    assert state.trust(again.root).keys.keys() == world.trust.keys.keys()
    assert state.revocations(VIN) == revocations
    same_boot = state.clock(mono=25.0, boot_id="boot-a")
    assert same_boot is not None
    assert same_boot.now(25.0) == NOW + 15.0
    assert not same_boot.reset
    rebooted = state.clock(mono=1.0, boot_id="boot-b")
    assert rebooted is not None
    assert rebooted.reset  # a new boot is a clock reset: time kept only as a lower bound
    assert rebooted.now(1.0) == NOW + 10.0


def test_a_fresh_state_is_not_provisioned(tmp_path: Path) -> None:
    state = AgentState.open(tmp_path / "agent.db")
    with pytest.raises(StateError, match="not provisioned"):
        state.identity()
    assert state.revocations(VIN) == RevocationState(VIN)
    assert state.clock(mono=0.0, boot_id="b") is None


def test_commands_begin_once_and_interrupted_ones_never_run_again(tmp_path: Path) -> None:
    state = AgentState.open(tmp_path / "agent.db")
    assert state.begin_command("c1", "unlock", at=1.0)
    assert not state.begin_command("c1", "unlock", at=2.0)
    state.finish_command("c1", "executed", "", at=3.0)
    assert state.begin_command("c2", "start", at=4.0)  # then the process dies mid-actuation
    unreported = {c.command_id: (c.status, c.detail) for c in state.unreported_commands()}
    assert unreported == {"c1": ("executed", ""), "c2": ("failed", "interrupted")}
    state.mark_reported(["c1", "c2"])
    assert state.unreported_commands() == []
    assert not state.begin_command("c2", "start", at=5.0)  # never again


def test_audit_outbox(tmp_path: Path) -> None:
    state = AgentState.open(tmp_path / "agent.db")
    seqs = [state.add_audit({"decision": "granted", "n": n}) for n in range(5)]
    assert state.outbox_depth() == 5
    batch = state.pending_audit(limit=3)
    assert [event["n"] for _, event in batch] == [0, 1, 2]
    state.mark_audit_sent(batch[-1][0])
    assert state.outbox_depth() == 2
    assert [seq for seq, _ in state.pending_audit()] == seqs[3:]


def test_damaged_or_newer_state_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot open"):
        AgentState.open(path)
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StateError, match="newer"):
        AgentState.open(newer)


def test_a_finished_command_survives_kill_9(tmp_path: Path) -> None:
    """The process records the outcome, then dies by SIGKILL before reporting it."""
    path = tmp_path / "agent.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from vehicle_agent.state import AgentState
        state = AgentState.open({str(path)!r})
        assert state.begin_command("c9", "unlock", at=1.0)
        state.finish_command("c9", "executed", "", at=2.0)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert result.returncode == -9
    state = AgentState.open(path)
    assert [(c.command_id, c.status) for c in state.unreported_commands()] == [("c9", "executed")]
    assert not state.begin_command("c9", "unlock", at=3.0)


def test_the_state_file_is_the_owners_only(tmp_path: Path, world: World) -> None:
    """It holds the car's private key: 0600 when made, and an older file is tightened."""
    path = tmp_path / "agent.db"
    state = AgentState.open(path)
    state.set_identity(identity(world))
    files = [p for p in tmp_path.iterdir() if p.name.startswith("agent.db")]
    assert {p.name for p in files} >= {"agent.db", "agent.db-wal"}
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    state.close()
    older = tmp_path / "older.db"
    older.touch(mode=0o644)
    AgentState.open(older).close()
    assert stat.S_IMODE(older.stat().st_mode) == 0o600
