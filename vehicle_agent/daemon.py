"""``vehicle-agent run``: the daemon — the car's decisions, its cloud link, its BLE peripheral
(when the machine has a BLE stack and the ``ble`` extra), and its metrics.

Unlocks never wait for the network: the cloud link runs beside the decisions and only feeds the
car newer signed documents and commands. Stops on SIGTERM/SIGINT (or a stop event in tests),
closing the link and the state cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ble_fallback.bless_link import BlessPeripheral
from keycore import UnlockDecision
from resilience.breaker_metrics import BreakerCollector
from vehicle_agent.actuator import Actuator, SimulatedActuator
from vehicle_agent.ble import VehicleBleEndpoint, start_peripheral
from vehicle_agent.channel import CloudLink, LinkState
from vehicle_agent.config import AgentConfig
from vehicle_agent.state import AgentState
from vehicle_agent.vehicle import Vehicle

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_LINK_STATES = {LinkState.OFFLINE: 0, LinkState.CONNECTING: 1, LinkState.ONLINE: 2}


def boot_id() -> str:
    """The kernel's id for this boot: the epoch of the monotonic clock."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown-boot"


class AgentCollector(Collector):
    """Gauges read at scrape time: link state, revocation sequence, sync lag, outbox depth."""

    def __init__(self, vehicle: Vehicle, link: CloudLink) -> None:
        self.vehicle = vehicle
        self.link = link

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "phonekey_agent_cloud_link_state",
            "Cloud link: 0 offline, 1 connecting, 2 online",
            value=_LINK_STATES[self.link.state],
        )
        yield GaugeMetricFamily(
            "phonekey_agent_revocation_sequence",
            "Sequence of the revocation list the car enforces",
            value=self.vehicle.revocations.sequence,
        )
        yield GaugeMetricFamily(
            "phonekey_agent_trust_sequence",
            "Sequence of the trust-store update the car holds",
            value=self.vehicle.trust.sequence,
        )
        yield GaugeMetricFamily(
            "phonekey_agent_sync_lag_seconds",
            "Seconds the car may have missed keyserver pushes: 0 while its channel is up",
            value=self.link.stats.sync_lag(time.monotonic()),
        )
        yield GaugeMetricFamily(
            "phonekey_agent_outbox_depth",
            "Audit events not yet acknowledged by the keyserver",
            value=self.vehicle.state.outbox_depth(),
        )
        yield GaugeMetricFamily(
            "phonekey_agent_clock_reset",
            "1 while the car's trusted clock waits for fresh signed time",
            value=int(self.vehicle.clock.reset),
        )


def metrics_registry(vehicle: Vehicle, link: CloudLink) -> CollectorRegistry:
    registry = CollectorRegistry()
    decisions = Counter(
        "phonekey_agent_decisions",
        "Unlock decisions by action and reason code",
        ["action", "code"],
        registry=registry,
    )

    def count(decision: UnlockDecision) -> None:
        action = decision.action.name.lower() if decision.action is not None else "unknown"
        decisions.labels(action, decision.code).inc()

    vehicle.on_decision = count
    registry.register(AgentCollector(vehicle, link))
    registry.register(BreakerCollector([link.breaker]))  # resilience4j names: cloud-link
    return registry


class AgentDaemon:
    """The running agent: state, vehicle, cloud link and metrics endpoint; ``start``/``stop``."""

    def __init__(self, config: AgentConfig, *, actuator: Actuator | None = None) -> None:
        self.config = config
        self.state = AgentState.open(config.state_path)
        try:
            self.vehicle = Vehicle.load(
                self.state, actuator or SimulatedActuator(), boot_id=boot_id()
            )
        except BaseException:
            self.state.close()
            raise
        self.link = CloudLink(self.vehicle)
        self.ble = VehicleBleEndpoint(self.vehicle)
        self.peripheral: BlessPeripheral | None = None
        self.registry = metrics_registry(self.vehicle, self.link)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self.config.metrics_port:
            self._runner = await _serve_metrics(self.registry, self.config.metrics_port)
        self.link.start()
        if self.config.ble:  # None without a BLE stack: the car runs on, cloud path only
            self.peripheral = await start_peripheral(self.ble, name=self.config.ble_name)

    async def stop(self) -> None:
        if self.peripheral is not None:
            await self.peripheral.stop()
        await self.ble.settled()  # a granted unlock finishes moving before the state closes
        await self.link.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self.state.close()


async def run_agent(config: AgentConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    daemon = AgentDaemon(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _serve_metrics(registry: CollectorRegistry, port: int) -> web.AppRunner:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
