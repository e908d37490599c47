"""The load generator of ``phonekey bench issue``, run as a process of its own:
``python -m lab.bench.loadgen --target NAME=URL … --credentials FILE``.

Against each target (a server's refresh URL), ``concurrency`` asyncio workers share one aiohttp
client session and send token refreshes (``POST URL``, no body) back to back, each with the
bearer session and a device proof signed here with a fresh nonce. Every target first gets
``warmup`` untimed requests; then the timed run goes in ``rounds`` rounds, each giving every target
``seconds / rounds`` in turn, so drift on a busy machine hits all targets alike. Each target's run
is also bounded by ``max_requests``, and every request by its own timeout. Prints one JSON object
per target: counts, statuses, the elapsed time and every latency.

The credentials file (JSON: ``bearer``, ``device_id``, ``device_key_pem``) is written by the
benchmark into its private temporary directory, so no secret appears on a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from keycore import SoftwareSigner
from keycore.request_proof import HEADER, sign_request

REQUEST_TIMEOUT_S = 10.0
WARMUP_MAX_S = 10.0
MAX_SECONDS = 600.0
MAX_FAILURES_KEPT = 5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Credentials:
    bearer: str
    device_id: str
    device: SoftwareSigner

    @classmethod
    def read(cls, path: Path) -> Credentials:
        data = json.loads(path.read_text())
        return cls(
            data["bearer"],
            data["device_id"],
            SoftwareSigner.from_pem(data["device_key_pem"].encode()),
        )


@dataclass
class Tally:
    """What one phase saw: a budget of requests still to send, statuses and latencies."""

    budget: int
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def take(self) -> bool:
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True

    def record(self, status: int, seconds: float, failure: str | None) -> None:
        self.statuses[status] += 1
        self.latencies_ms.append(round(seconds * 1000, 3))
        if failure is not None and len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(failure)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


async def _worker(
    session: aiohttp.ClientSession, url: URL, who: Credentials, tally: Tally, deadline: float
) -> None:
    while time.monotonic() < deadline and tally.take():
        proof = sign_request(
            who.device,
            device_id=who.device_id,
            method="POST",
            path=url.path_qs,
            body=b"",
            timestamp=int(time.time()),
        )
        headers = {"Authorization": f"Bearer {who.bearer}", HEADER: proof}
        failure = None
        started = time.perf_counter()
        try:
            async with session.post(url, headers=headers) as response:
                body = await response.read()
                status = response.status
            if not 200 <= status < 300:
                failure = f"{status} {body[:200].decode('utf-8', 'replace')}"
        except (aiohttp.ClientError, TimeoutError) as error:
            status, failure = 0, f"{type(error).__name__}: {error}"
        tally.record(status, time.perf_counter() - started, failure)


@dataclass
class Target:
    """One server under load: its refresh URL, its own connection pool, what it answered."""

    name: str
    url: URL
    session: aiohttp.ClientSession
    warm: Tally
    timed: Tally
    watched: dict[str, int] = field(default_factory=dict)  # process name → pid
    elapsed_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # in the timed phases, by process

    def report(self) -> dict[str, Any]:
        statuses = self.warm.statuses + self.timed.statuses
        return {
            "requests": sum(self.timed.statuses.values()),
            "ok": sum(self.timed.statuses.values()) - self.timed.errors,
            "errors": self.timed.errors + self.warm.errors,
            "warmup_requests": sum(self.warm.statuses.values()),
            "statuses": {str(status): n for status, n in sorted(statuses.items())},
            "elapsed_s": self.elapsed_s,
            "cpu_s": self.cpu_s,
            "latencies_ms": self.timed.latencies_ms,
            "failures": (self.warm.failures + self.timed.failures)[:MAX_FAILURES_KEPT],
        }


async def _phase(
    target: Target, who: Credentials, tally: Tally, seconds: float, workers: int
) -> float:
    started = time.perf_counter()
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(_worker(target.session, target.url, who, tally, until) for _ in range(workers))
    )
    return time.perf_counter() - started


async def drive(
    urls: dict[str, URL],
    who: Credentials,
    *,
    seconds: float,
    concurrency: int,
    max_requests: int,
    warmup: int,
    rounds: int,
    watched: dict[str, dict[str, int]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Warm each target up, then ``rounds`` rounds of ``seconds / rounds`` on each target in
    turn: drift on a busy machine hits every target alike."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    targets = [
        Target(
            name,
            url,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
            ),
            Tally(warmup),
            Tally(max_requests),
            dict((watched or {}).get(name, {})),
        )
        for name, url in urls.items()
    ]
    try:
        for target in targets:
            await _phase(target, who, target.warm, WARMUP_MAX_S, concurrency)
        for turn in range(rounds):
            for target in targets[turn % len(targets) :] + targets[: turn % len(targets)]:
                before = _cpu_times(target.watched)
                target.elapsed_s += await _phase(
                    target, who, target.timed, seconds / rounds, concurrency
                )
                for name, spent in _cpu_times(target.watched).items():
                    target.cpu_s[name] = target.cpu_s.get(name, 0.0) + spent - before[name]
    finally:
        for target in targets:
            await target.session.close()
    return {target.name: target.report() for target in targets}


def _cpu_times(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of this generator and of each watched process."""
    times = {"loadgen": time.process_time()}
    for name, pid in pids.items():
        times[name] = _process_cpu_s(pid)
    return times


def _process_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # not Linux, or gone: counted as nothing rather than failing the run
        return 0.0
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bench.loadgen", description=__doc__)
    parser.add_argument(
        "--target", action="append", required=True, metavar="NAME=URL",
        help="a server's refresh URL on 127.0.0.1 (repeat for each server)",
    )  # fmt: skip
    parser.add_argument(
        "--watch", action="append", default=[], metavar="TARGET=NAME:PID",
        help="count a process's CPU while TARGET is under load (repeat)",
    )  # fmt: skip
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per target")
    parser.add_argument("--concurrency", type=_positive, default=32)
    parser.add_argument("--rounds", type=_positive, default=10)
    parser.add_argument("--max-requests", type=_positive, default=500_000, help="per target")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per target")
    args = parser.parse_args(argv)
    urls: dict[str, URL] = {}
    for spec in args.target:
        name, _, url = spec.partition("=")
        urls[name] = URL(url)
        if urls[name].host != "127.0.0.1":  # load goes to this machine's loopback only
            parser.error("every URL must be on 127.0.0.1")
    watched: dict[str, dict[str, int]] = {name: {} for name in urls}
    for spec in args.watch:
        target, _, process = spec.partition("=")
        name, _, pid = process.partition(":")
        if target not in urls or not name or not pid.isdigit():
            parser.error(f"--watch {spec!r}: expected TARGET=NAME:PID for a named target")
        watched[target][name] = int(pid)
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    report = asyncio.run(
        drive(
            urls,
            Credentials.read(args.credentials),
            seconds=args.seconds,
            concurrency=args.concurrency,
            max_requests=args.max_requests,
            warmup=max(args.warmup, 0),
            rounds=args.rounds,
            watched=watched,
        )
    )
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
