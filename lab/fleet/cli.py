"""``phonekey fleet``: the command line of the fleet simulator (``lab.fleet.run``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from keycore.cose import load_point
from keycore.encoding import b64url_decode
from lab.api import ApiCallError
from lab.fleet.redis_restart import SAMPLE_EVERY_S as SAMPLE_S
from lab.fleet.report import ProcessCpu, RedisRestartReport, RestartReport
from lab.fleet.run import (
    MAX_PROCESSES,
    STEP_LIMIT_S,
    FleetError,
    FleetReport,
    FleetSettings,
    run_fleet,
)
from lab.processes.base import ProcessError

MAX_VEHICLES = 20_000  # each car holds a socket and its state: a bound on one run
MAX_JITTER_S = 600.0
SECRET_ENV = "PHONEKEY_PROVISIONING_SECRET"  # noqa: S105 — the variable's name, not a value


def add_parser(commands: Any) -> None:
    fleet = commands.add_parser(
        "fleet",
        help="N simulated cars (over one or more processes) against a keyserver",
        description="Provision N simulated cars (each its own agent state and cloud link), "
        "connect them, send a revocation and a remote lock to every car, optionally restart "
        "the keyserver or its Redis, and report the figures. Without --keyserver it starts its "
        "own (embedded SQLite store, or --store redis with a redis-server of its own on a free "
        "loopback port) and stops it afterwards.",
    )
    fleet.add_argument("--vehicles", type=_vehicles, required=True, help="how many cars")
    fleet.add_argument("--keyserver", help="base URL of a running keyserver (default: own)")
    fleet.add_argument(
        "--root-key",
        type=_root_key,
        help="with --keyserver: its root key (base64url x||y; write --root-key=KEY, as a key may"
        " begin with '-')",
    )
    fleet.add_argument(
        "--first-jitter", type=_jitter, default=None, help="reconnect jitter after a drop, seconds"
    )
    fleet.add_argument("--restart", action="store_true", help="restart the own keyserver once")
    fleet.add_argument(
        "--processes", type=_processes, default=1, help="worker processes for the cars (default 1)"
    )
    fleet.add_argument(
        "--store", choices=("embedded", "redis"), default="embedded",
        help="the own keyserver's store (redis: a redis-server of the run's own)",
    )  # fmt: skip
    fleet.add_argument(
        "--restart-redis", action="store_true",
        help="with --store redis: restart Redis under the cars, revoking on every car meanwhile",
    )  # fmt: skip
    fleet.add_argument(
        "--within", type=_within, default=STEP_LIMIT_S,
        help=f"seconds a restart waits for every car at most (default {STEP_LIMIT_S:g})",
    )  # fmt: skip
    fleet.add_argument("--no-revoke", action="store_true", help="skip the revocation round")
    fleet.add_argument("--no-command", action="store_true", help="skip the command round")
    fleet.add_argument("--state-dir", type=Path, help="keep each car's state in a file here")
    fleet.add_argument("--json", action="store_true", help="print the JSON report only")


def run(args: argparse.Namespace) -> int:
    settings = FleetSettings(
        vehicles=args.vehicles,
        keyserver_url=args.keyserver.rstrip("/") if args.keyserver else None,
        root_key=args.root_key,
        provisioning_secret=os.environ.get(SECRET_ENV, ""),
        revoke=not args.no_revoke,
        command=not args.no_command,
        restart=args.restart,
        restart_redis=args.restart_redis,
        store=args.store,
        processes=args.processes,
        back_limit_s=args.within,
        state_dir=args.state_dir,
        **({} if args.first_jitter is None else {"first_jitter_s": args.first_jitter}),
    )
    if settings.state_dir is not None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = run_fleet(settings)
    except (FleetError, ProcessError, ApiCallError, OSError) as error:
        print(f"phonekey fleet: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the run has stopped its workers, keyserver and Redis
        print("phonekey fleet: interrupted", file=sys.stderr)
        return 130
    print(report.to_json() if args.json else _table(report))
    ok = report.revocations_enforced == report.vehicles if settings.revoke else True
    ok = ok and report.commands_doubled == 0 and report.online == report.vehicles
    if report.restart is not None:
        ok = ok and report.restart.spread.all_back_s is not None
        ok = ok and report.restart.answers.errors == 0
    if report.redis_restart is not None:
        ok = ok and report.redis_restart.all_current_s is not None
        ok = ok and report.redis_restart.matching_ledger == report.vehicles
    return 0 if ok else 1


def _table(r: FleetReport) -> str:
    lines = [
        f"cars online            {r.online} / {r.vehicles}  (set up in {r.setup_s} s)",
        f"memory per car         {r.memory_per_vehicle_kib} KiB (process RSS growth / cars)",
    ]
    if r.revocations_sent:
        lines.append(
            f"revocation → car       p50 {r.revocation_p50_ms} ms  p99 {r.revocation_p99_ms} ms"
            f"  max {r.revocation_max_ms} ms  enforced on {r.revocations_enforced} cars"
        )
    if r.commands_sent:
        lines.append(
            f"remote lock → actuator p50 {r.command_p50_ms} ms  p99 {r.command_p99_ms} ms"
            f"  executed {r.commands_executed}  doubled {r.commands_doubled}"
        )
    if r.restart is not None:
        lines += _restart_lines(r.restart)
    if r.redis_restart is not None:
        lines += _redis_lines(r.redis_restart)
    return "\n".join(lines)


def _restart_lines(r: RestartReport) -> list[str]:
    s, a = r.spread, r.answers
    back = f"{s.all_back_s} s" if s.all_back_s is not None else f"NOT ALL ({s.reconnected})"
    lines = [
        f"keyserver restart      load {r.load_before}; listening {r.down_to_listen_s} s after"
        f" SIGTERM (ready line +{r.listen_to_ready_s} s)",
        f"  all cars back        {back} after it listened; {s.reconnected} / {s.vehicles}",
        f"  reconnect times      p50 {s.p50_s} s  p90 {s.p90_s} s  p99 {s.p99_s} s"
        f"  max {s.max_s} s  (first {s.first_s} s)",
        f"  reconnect rate       peak {s.peak_per_s}/s ({s.peak_per_bucket} per {s.bucket_s} s,"
        f" {s.peak_share:.1%} of the fleet; busiest second {s.peak_per_s_1s}) against"
        f" {s.steady_per_s}/s even: x{s.peak_over_steady}",
        f"  cars were answered   {a.upgrades} upgrades, {a.refusals_paced} paced 429s,"
        f" {a.refusals_other} other 429s, {a.errors} errors; {a.refused_while_down} refused"
        f" while down; {a.throttled_locally} throttled locally",
        f"  keyserver counted    {_counts(r.server)}",
    ]
    lines += _cpu_lines(r.cpu)
    for car in r.slowest[:5]:
        lines.append(
            f"  slow: {car.vin} back {car.back_s} s, {car.attempts} attempts,"
            f" answers {car.answers or '{}'}, breaker {car.breaker},"
            f" last error {car.last_error!r}"
        )
    return lines


def _redis_lines(r: RedisRestartReport) -> list[str]:
    current = f"{r.all_current_s} s" if r.all_current_s is not None else "NOT ALL"
    o = r.store_ops
    lines = [
        f"redis restart          load {r.load_before}; listening {r.down_to_listen_s} s after"
        f" SIGTERM (loaded +{r.listen_to_ready_s} s)",
        f"  outage revocations   {r.outage_answers}; pushed at once to {r.reached_in_outage}"
        f" cars; asked again after: {r.retried_after}",
        f"  every car current    {current} after Redis listened; {r.current} / {r.vehicles};"
        f" p50 {r.p50_s} s  p90 {r.p90_s} s  p99 {r.p99_s} s  max {r.max_s} s",
        f"  checked              {r.matching_ledger} hold the ledger's sequence, {r.enforced}"
        f" deny the key, {r.online_after} online",
        f"  store operations     peak {o.peak_per_s}/s (per {SAMPLE_S} s), mean {o.mean_per_s}/s,"
        f" Redis's own instantaneous max {o.instantaneous_max}/s",
    ]
    lines += _cpu_lines(r.cpu)
    for car in r.slowest[:5]:
        lines.append(
            f"  slow: {car.vin} current {car.current_s} s, sequence {car.sequence} (ledger"
            f" {car.ledger_sequence}), outage answer {car.outage_answer!r},"
            f" last error {car.last_error!r}"
        )
    return lines


def _cpu_lines(cpu: list[ProcessCpu]) -> list[str]:
    return [
        f"  cpu {p.name:<16} {p.user_s} s user + {p.sys_s} s sys = {p.share:.0%} of a core"
        for p in cpu
    ]


def _counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in counts.items()) or "(no metrics)"


def _processes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be in 1…{MAX_PROCESSES}")
    return value


def _within(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be in 1…3600")
    return value


def _vehicles(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_VEHICLES:
        raise argparse.ArgumentTypeError(f"must be in 1…{MAX_VEHICLES}")
    return value


def _jitter(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= MAX_JITTER_S:
        raise argparse.ArgumentTypeError(f"must be in 0…{MAX_JITTER_S:g}")
    return value


def _root_key(text: str) -> ec.EllipticCurvePublicKey:
    try:
        raw = b64url_decode(text)
        if len(raw) != 64:
            raise ValueError("not 64 bytes")
        return load_point(raw)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError("not a base64url P-256 point (64 bytes x||y)") from None
