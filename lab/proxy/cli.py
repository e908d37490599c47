"""``phonekey proxy``: the fault proxy (``lab.proxy.faultproxy``) as a process of its own, with its
control API (``lab.proxy.control``) and Prometheus metrics on a second loopback port.

Once both ports listen it prints one line, ``READY`` below, naming them (either may be asked as
0: the system picks a free port and the line says which), so the process that started it learns
the ports with no race. It runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lab.proxy.control import MAX_BODY_BYTES, FaultSpecError, apply, describe, parse_faults
from lab.proxy.faultproxy import Address, FaultProxy

READY = re.compile(
    rb"proxy ready listen=127\.0\.0\.1:([0-9]+) control=http://127\.0\.0\.1:([0-9]+)"
)
MAX_TARGETS = 64
PROXY = web.AppKey("proxy", FaultProxy)


def add_parser(commands: Any) -> None:
    proxy = commands.add_parser(
        "proxy",
        help="a fault-injecting TCP proxy with an HTTP control API",
        description="Forward 127.0.0.1:LISTEN to the targets (round robin per connection, "
        "skipping a target that refuses) and inject the faults set at run time through "
        "GET/PUT/DELETE http://127.0.0.1:CONTROL/faults.",
    )
    proxy.add_argument("--listen-port", type=_port, default=0, help="0: pick a free port")
    proxy.add_argument(
        "--target", type=_address, action="append", required=True, help="HOST:PORT (repeatable)"
    )
    proxy.add_argument("--control-port", type=_port, default=0, help="0: pick a free port")
    proxy.add_argument("--max-connections", type=_connections, default=1024)
    proxy.add_argument("--name", default="proxy", help="for its log and metrics")
    proxy.add_argument(
        "--health-interval-ms",
        type=_interval,
        default=200,
        help="probe the targets this often; while none accepts, refuse new connections "
        "(0: never probe)",
    )


def run(args: argparse.Namespace) -> int:
    if len(args.target) > MAX_TARGETS:
        print(f"phonekey proxy: at most {MAX_TARGETS} targets", file=sys.stderr)
        return 2
    try:
        asyncio.run(
            serve(
                args.target,
                listen_port=args.listen_port,
                control_port=args.control_port,
                max_connections=args.max_connections,
                name=args.name,
                health_interval_s=args.health_interval_ms / 1000 or None,
            )
        )
    except OSError as error:  # a port that was asked for is taken
        print(f"phonekey proxy: cannot listen: {error}", file=sys.stderr)
        return 1
    return 0


async def serve(
    targets: Sequence[Address],
    *,
    listen_port: int = 0,
    control_port: int = 0,
    max_connections: int = 1024,
    name: str = "proxy",
    health_interval_s: float | None = None,
) -> None:
    """Run the proxy and its control API until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    proxy = FaultProxy.balancing(
        targets, max_connections=max_connections, listen_port=listen_port,
        health_interval_s=health_interval_s,
    )  # fmt: skip
    async with proxy:
        runner = web.AppRunner(create_control_app(proxy, name=name), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", control_port)
            await site.start()
            control = runner.addresses[0][1]
            shown = " ".join(f"{host}:{port}" for host, port in targets)
            print(
                f"proxy ready listen=127.0.0.1:{proxy.port} control=http://127.0.0.1:{control}"
                f" name={name} targets={shown}",
                flush=True,
            )
            await stop.wait()
        finally:
            await runner.cleanup()


def create_control_app(proxy: FaultProxy, *, name: str = "proxy") -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[PROXY] = proxy
    registry = CollectorRegistry()
    registry.register(ProxyCollector(proxy, name))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app.router.add_get("/faults", show_faults)
    app.router.add_put("/faults", put_faults)
    app.router.add_delete("/faults", clear_faults)
    app.router.add_get("/metrics", metrics)
    return app


async def show_faults(request: web.Request) -> web.Response:
    return web.json_response(describe(request.app[PROXY]))


async def put_faults(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    try:
        body = json.loads(await request.read())
        faults = parse_faults(body)
    except (ValueError, FaultSpecError) as error:  # a JSON error is a ValueError too
        message = str(error) if isinstance(error, FaultSpecError) else "the body is not JSON"
        return web.json_response({"error": "bad_faults", "message": message}, status=400)
    apply(proxy, faults)
    return web.json_response(describe(proxy))


async def clear_faults(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    proxy.clear()
    return web.json_response(describe(proxy))


class ProxyCollector(Collector):
    """The proxy's counters and the faults in force, as Prometheus metrics."""

    def __init__(self, proxy: FaultProxy, name: str) -> None:
        self.proxy = proxy
        self.name = name

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats, faults, labels = self.proxy.stats, self.proxy.faults, ["proxy"]
        accepted = CounterMetricFamily(
            "phonekey_proxy_connections", "client connections accepted", labels=labels
        )
        accepted.add_metric([self.name], stats.accepted)
        yield accepted
        open_now = GaugeMetricFamily(
            "phonekey_proxy_open_connections", "client connections open", labels=labels
        )
        open_now.add_metric([self.name], self.proxy.connections)
        yield open_now
        moved = CounterMetricFamily(
            "phonekey_proxy_bytes", "bytes forwarded", labels=["proxy", "direction"]
        )
        moved.add_metric([self.name, "up"], stats.bytes_up)
        moved.add_metric([self.name, "down"], stats.bytes_down)
        yield moved
        refused = CounterMetricFamily(
            "phonekey_proxy_target_refused",
            "connects a target refused",
            labels=["proxy", "target"],
        )
        for target in stats.targets:
            refused.add_metric([self.name, f"{target.host}:{target.port}"], target.refused)
        yield refused
        listening = GaugeMetricFamily(
            "phonekey_proxy_listening",
            "1 while it accepts connections (0: no target accepts)",
            labels=labels,
        )
        listening.add_metric([self.name], float(stats.listening))
        yield listening
        active = GaugeMetricFamily(
            "phonekey_proxy_fault_active", "1 while the fault is set", labels=["proxy", "fault"]
        )
        active.add_metric([self.name, "latency"], float(faults.latency_up_s > 0))
        active.add_metric([self.name, "black_hole"], float(faults.black_hole))
        active.add_metric([self.name, "reset"], float(faults.reset))
        active.add_metric([self.name, "bandwidth"], float(faults.bytes_per_s is not None))
        yield active


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return int(text)


def _connections(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65536:
        raise argparse.ArgumentTypeError("must be in 1…65536")
    return int(text)


def _interval(text: str) -> int:
    if not text.isdigit() or int(text) > 60_000:
        raise argparse.ArgumentTypeError("milliseconds in 0…60000")
    return int(text)


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not a loopback HOST:PORT: {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lab.proxy.cli …``: the same as ``phonekey proxy …``, lighter to start."""
    parser = argparse.ArgumentParser(prog="phonekey")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["proxy", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
