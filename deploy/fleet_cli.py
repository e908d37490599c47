"""``phonekey fleet``: the command line of the fleet simulator (``deploy.fleet_run``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from deploy.api import ApiCallError
from deploy.fleet_run import FleetError, FleetReport, FleetSettings, run_fleet
from deploy.processes import ProcessError
from keycore.cose import load_point
from keycore.encoding import b64url_decode

MAX_VEHICLES = 20_000  # each car holds a socket and its state: a bound on one process
MAX_JITTER_S = 600.0
SECRET_ENV = "PHONEKEY_PROVISIONING_SECRET"  # noqa: S105 — the variable's name, not a value


def add_parser(commands: Any) -> None:
    fleet = commands.add_parser(
        "fleet",
        help="N simulated cars in one process against a keyserver",
        description="Provision N simulated cars (each its own agent state and cloud link), "
        "connect them, send a revocation and a remote lock to every car, optionally restart "
        "the keyserver, and report the figures. Without --keyserver it starts its own "
        "(embedded SQLite store) and stops it afterwards.",
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
    print(report.to_json() if args.json else _table(report))
    ok = report.revocations_enforced == report.vehicles if settings.revoke else True
    ok = ok and report.commands_doubled == 0 and report.online == report.vehicles
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
        s = r.restart
        lines.append(
            f"keyserver restart      {s.reconnected} cars back between {s.first_s} s and"
            f" {s.last_s} s; peak {s.peak_per_bucket} per {s.bucket_s} s"
            f" ({s.peak_per_s}/s, {s.peak_share:.1%} of the fleet)"
        )
    return "\n".join(lines)


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
