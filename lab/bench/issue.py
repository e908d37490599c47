"""``phonekey bench issue``: token refresh on one keyserver process against a same-run ceiling.

One run, on this machine's loopback only:

1. a ``redis-server`` and ONE keyserver process (``python -m keyserver.cli serve``) on the Redis
   store, with a temporary data directory and a provisioning secret;
2. set-up over HTTP, as a phone and a car would: an account, a login, a device enrolled with the
   password and a proof by its own key, a provisioned car, the car's pairing code (signed by the
   car), owner pairing, and an owner key for the device;
3. the ceiling and the bare handler (``lab.bench.ceiling``: verify the proof and sign the token,
   nothing else; do nothing at all), each an aiohttp process of its own;
4. the load generator (``lab.bench.loadgen``, a process of its own) drives token refresh
   (``POST /v1/keys/{key_id}/token``, a fresh device proof per request) on all three with the
   same requests, in turns of about ``SLICE_S`` each, so drift on a busy machine hits all alike.

Every process is stopped afterwards. ``ratio`` = rps / ceiling_rps: the share of the unavoidable
cryptography's throughput that the keyserver keeps once everything around it is added — session,
device and key lookups, the nonce's single use, metrics, request logging, JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from keycore import SoftwareSigner
from keycore.cose import point_bytes
from keycore.encoding import b64url_encode
from keyserver.auth import device_id_for
from lab.api import ApiCallError, call
from lab.bench.loadgen import REQUEST_TIMEOUT_S, WARMUP_MAX_S
from lab.errors import LabError
from lab.processes.app import AppServer
from lab.processes.keyserver import keyserver_command, keyserver_env
from lab.processes.redis_server import RedisServer
from lab.stats import percentile

VIN = "5YJ3E1EA7KF000001"
LOG_LEVEL = "info"  # the keyserver logs every request, as in production
MAX_RPS = 50_000  # the request budget is seconds × this: a bound, never reached on one machine
WARMUP_REQUESTS = 200
SLICE_S = 0.5  # the timed run goes in rounds of about this long per server
SETUP_TIMEOUT_S = 30.0


class BenchError(LabError, RuntimeError):
    """The benchmark could not run; the message is one line for a person."""


@dataclass(frozen=True)
class Figures:
    """What the generator measured against one server."""

    rps: float  # 2xx answers per second of the timed run
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and failed requests, warm-up included
    failures: list[str] = field(default_factory=list)
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU per request, by process


@dataclass(frozen=True)
class IssueBench:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    ceiling_rps: float
    ceiling_p50_ms: float
    ceiling_p99_ms: float
    ceiling_errors: int
    bare_rps: float
    bare_p50_ms: float
    bare_p99_ms: float
    bare_errors: int
    ratio: float
    failures: list[str]
    settings: dict[str, Any]
    cpu_us: dict[str, dict[str, float]] = field(default_factory=dict)  # per request, by target

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class Phone:
    """What the generator needs to refresh like the enrolled phone."""

    bearer: str
    device_id: str
    device: SoftwareSigner
    key_id: str

    @property
    def refresh_path(self) -> str:
        return f"/v1/keys/{self.key_id}/token"


def bench_issue(*, seconds: float = 10.0, concurrency: int = 32) -> IssueBench:
    max_requests = max(1, int(seconds * MAX_RPS))
    rounds = max(1, round(seconds / SLICE_S))
    secret = secrets.token_urlsafe(24)  # the provisioning credential of this run's keyserver
    with tempfile.TemporaryDirectory(prefix="phonekey-bench-") as tmp, ExitStack() as servers:
        work = Path(tmp)
        redis = servers.enter_context(RedisServer(work / "redis"))
        keyserver = servers.enter_context(
            AppServer(
                keyserver_command(),
                workdir=work / "keyserver",
                env=_keyserver_env(work / "keyserver", redis.url, secret),
                name="keyserver",
            )
        )
        phone = asyncio.run(_set_up(keyserver.url, secret))
        credentials = _write_credentials(work, phone)
        reference = [sys.executable, "-m", "lab.bench.ceiling"]
        holder = b64url_encode(point_bytes(phone.device.public_key))
        ceiling = servers.enter_context(
            AppServer(
                [*reference, "ceiling", "--holder", holder],
                workdir=work / "ceiling",
                env=os.environ,
                name="ceiling",
            )
        )
        bare = servers.enter_context(
            AppServer([*reference, "bare"], workdir=work / "bare", env=os.environ, name="bare")
        )
        targets = {"keyserver": keyserver, "ceiling": ceiling, "bare": bare}
        watched = {
            "keyserver": {"keyserver": keyserver.pid, "redis": redis.pid},
            "ceiling": {"ceiling": ceiling.pid},
            "bare": {"bare": bare.pid},
        }
        figures = _drive(
            {name: server.url + phone.refresh_path for name, server in targets.items()},
            watched,
            credentials,
            seconds=seconds,
            concurrency=concurrency,
            rounds=rounds,
            max_requests=max_requests,
        )
        servers.close()  # every process stopped, and the keyserver's log complete
        logged = _requests_logged(keyserver.log_path)
    measured, top, floor = figures["keyserver"], figures["ceiling"], figures["bare"]
    return IssueBench(
        rps=measured.rps,
        p50_ms=measured.p50_ms,
        p99_ms=measured.p99_ms,
        requests=measured.requests,
        errors=measured.errors,
        ceiling_rps=top.rps,
        ceiling_p50_ms=top.p50_ms,
        ceiling_p99_ms=top.p99_ms,
        ceiling_errors=top.errors,
        bare_rps=floor.rps,
        bare_p50_ms=floor.p50_ms,
        bare_p99_ms=floor.p99_ms,
        bare_errors=floor.errors,
        ratio=round(measured.rps / top.rps, 3) if top.rps else 0.0,
        failures=measured.failures + top.failures + floor.failures,
        cpu_us={name: figures[name].cpu_us for name in targets},
        settings={
            "seconds": seconds,
            "concurrency": concurrency,
            "rounds": rounds,
            "max_requests": max_requests,
            "warmup_requests": WARMUP_REQUESTS,
            "store": "redis",
            "keyserver_processes": 1,
            "keyserver_log_level": LOG_LEVEL,
            "keyserver_requests_logged": logged,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    )


def _keyserver_env(data_dir: Path, redis_url: str, secret: str) -> dict[str, str]:
    # port 0: the process reports the port it got (lab.processes.app.AppServer)
    return keyserver_env(
        port=0, data_dir=data_dir, secret=secret, redis_url=redis_url, log_level=LOG_LEVEL
    )


async def _set_up(base_url: str, provisioning_secret: str) -> Phone:
    """Account, login, device, car, pairing and an owner key, all over HTTP."""
    timeout = aiohttp.ClientTimeout(total=SETUP_TIMEOUT_S)
    async with aiohttp.ClientSession(base_url=base_url, timeout=timeout) as http:
        try:
            return await _set_up_steps(http, provisioning_secret)
        except ApiCallError as error:
            raise BenchError(f"set-up step {error}") from None


async def _set_up_steps(http: aiohttp.ClientSession, provisioning_secret: str) -> Phone:
    email, password = "bench@example.org", secrets.token_urlsafe(18)
    credentials = {"email": email, "password": password}
    await call(http, "/v1/accounts", credentials)
    bearer = str((await call(http, "/v1/sessions", credentials))["token"])
    device = SoftwareSigner.generate()
    xy = point_bytes(device.public_key)
    device_id = device_id_for(xy)
    phone = (device, device_id)
    enrolment = {"name": "bench phone", "public_key": b64url_encode(xy), "password": password}
    await call(http, "/v1/devices", enrolment, bearer=bearer, signer=phone)
    car = SoftwareSigner.generate()
    await call(
        http,
        "/v1/vehicles",
        {"vin": VIN, "public_key": b64url_encode(point_bytes(car.public_key))},
        authorization=f"Provisioning {provisioning_secret}",
    )
    shown = await call(http, f"/v1/vehicles/{VIN}/pairing-code", None, signer=(car, VIN))
    pairing = {"code": shown["code"]}  # what the owner reads off the car's screen
    await call(http, f"/v1/vehicles/{VIN}/owner", pairing, bearer=bearer, signer=phone)
    key = await call(
        http, f"/v1/vehicles/{VIN}/keys", {"device_id": device_id}, bearer=bearer, signer=phone
    )
    return Phone(bearer, device_id, device, str(key["key_id"]))


def _write_credentials(work: Path, phone: Phone) -> Path:
    path = work / "credentials.json"
    pem = phone.device.to_pem().decode()
    data = {"bearer": phone.bearer, "device_id": phone.device_id, "device_key_pem": pem}
    path.touch(mode=0o600)
    path.write_text(json.dumps(data))
    return path


def _drive(
    urls: dict[str, str],
    watched: dict[str, dict[str, int]],
    credentials: Path,
    *,
    seconds: float,
    concurrency: int,
    rounds: int,
    max_requests: int,
) -> dict[str, Figures]:
    """Run the load generator process against ``urls`` (interleaved) and read its report."""
    args = [sys.executable, "-m", "lab.bench.loadgen", "--credentials", str(credentials)]
    for name, url in urls.items():
        args += ["--target", f"{name}={url}"]
        args += [f"--watch={name}={process}:{pid}" for process, pid in watched[name].items()]
    args += [
        "--seconds", str(seconds),
        "--concurrency", str(concurrency),
        "--rounds", str(rounds),
        "--max-requests", str(max_requests),
        "--warmup", str(WARMUP_REQUESTS),
    ]  # fmt: skip
    # a hang guard: each phase ends by its deadline plus at most one request timeout
    phases = len(urls) * (rounds + 1)
    bound = len(urls) * (seconds + WARMUP_MAX_S) + phases * REQUEST_TIMEOUT_S + 30
    try:
        done = subprocess.run(  # noqa: S603 — our own interpreter and module
            args, capture_output=True, timeout=bound, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"the load generator did not finish within {bound:.0f} s") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise BenchError(f"the load generator failed: {' '.join(tail)}")
    return {name: _figures(name, report) for name, report in json.loads(done.stdout).items()}


def _figures(name: str, report: dict[str, Any]) -> Figures:
    latencies: list[float] = report["latencies_ms"]
    if not latencies:
        raise BenchError(f"the load generator made no timed request to {name}")
    return Figures(
        rps=round(report["ok"] / report["elapsed_s"], 1),
        p50_ms=round(statistics.median(latencies), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        requests=report["requests"],
        errors=report["errors"],
        failures=[f"{name}: {failure}" for failure in report["failures"]],
        cpu_us={
            process: round(spent / max(report["requests"], 1) * 1e6, 1)
            for process, spent in report.get("cpu_s", {}).items()
        },
    )


def _requests_logged(log: Path) -> int:
    """How many request lines the keyserver logged: the benchmark ran with logging on."""
    with log.open("rb") as lines:
        return sum(1 for line in lines if b'"msg": "request"' in line)
