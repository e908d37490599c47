"""`vehicle-agent run`: a provisioned car comes online, serves metrics, and stops cleanly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from keycore import Action, Role, UnlockRequest, issue, prove
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from lab.processes.base import free_port
from tests.conftest import VIN
from tests.vehicle_agent.test_provision import SECRET, agent_config, server
from vehicle_agent.channel import LinkState
from vehicle_agent.config import build
from vehicle_agent.daemon import AgentDaemon, run_agent
from vehicle_agent.provision import provision

__all__ = ["SECRET", "server"]


async def test_the_daemon_comes_online_decides_and_reports(
    server: TestServer, tmp_path: Path
) -> None:
    base = agent_config(server, tmp_path)
    await provision(base)
    port = free_port()
    config = build(
        {
            "vin": VIN,
            "keyserver_url": base.keyserver_url,
            "root_key": b64url_encode(point_bytes(base.root_key)),
            "state_path": str(base.state_path),
            "metrics_port": str(port),
        }
    )
    daemon = AgentDaemon(config)
    await daemon.start()
    try:
        async with asyncio.timeout(30):  # a hang guard, not a timing assertion
            await daemon.link.wait_until(lambda: daemon.link.state is LinkState.ONLINE)
        # an offline-style decision through the running car, counted in the metrics
        from keycore import SoftwareSigner
        from keyserver.app import KEYRING  # the server's issuer signs a token for a phone

        phone = SoftwareSigner.generate()
        now = int(time.time())  # the issuer's clock; the car may still be waiting for time
        token = issue(
            signer=server.app[KEYRING].ring.active.signer, vin=VIN, holder=phone.public_key,
            role=Role.OWNER, now=now, expires=now + 3600,
        )  # fmt: skip
        challenge = daemon.vehicle.challenge()
        proof = prove(phone, challenge=challenge, vin=VIN, action=Action.UNLOCK, token=token)
        decision = await daemon.vehicle.unlock(
            UnlockRequest(token, Action.UNLOCK, challenge, proof)
        )
        assert decision.allowed
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            text = await response.text()
        assert "phonekey_agent_cloud_link_state 2.0" in text
        assert 'phonekey_agent_decisions_total{action="unlock",code="granted"} 1.0' in text
        assert "phonekey_agent_outbox_depth" in text
        assert "phonekey_agent_sync_lag_seconds 0.0" in text  # online: nothing missed
        closed = 'resilience4j_circuitbreaker_state{name="cloud-link",state="closed"} 1.0'
        assert closed in text
    finally:
        await daemon.stop()
    stats = daemon.link.stats
    assert stats.state is LinkState.OFFLINE
    assert stats.sync_lag(stats.offline_since + 42.5) == 42.5  # counted from the drop
    assert stats.sync_lag(stats.offline_since - 1) == 0.0  # never negative


async def test_run_agent_stops_on_its_event(server: TestServer, tmp_path: Path) -> None:
    config = agent_config(server, tmp_path)
    await provision(config)
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(config, stop=stop))
    stop.set()
    async with asyncio.timeout(30):
        await task
