"""``phonekey world``: the staging world as a process — cars and phones at work (``lab.world``)
with its control API (``lab.world.control``) on a loopback port.

Prints ``world ready on http://127.0.0.1:PORT`` (and aiohttp's own "Running on" line) once the
control API listens; the world is warm when ``GET /status`` says so. Exits 0 after ``POST /stop``
or ``--max-seconds`` (the reconcile event written), and on SIGTERM/SIGINT at once (no reconcile);
1 if the set-up fails; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keycore.cose import load_point
from keycore.encoding import b64url_decode
from lab.cli_types import integer_in, seconds_up_to
from lab.processes.base import LOOPBACK
from lab.world.control import create_control_app
from lab.world.setup import WorldError
from lab.world.world import World, WorldSettings

MAX_CARS, MAX_PHONES = 1000, 2000
MAX_SECONDS = 86_400.0
MAX_SECRET_BYTES = 4096


def add_parser(commands: Any) -> None:
    world = commands.add_parser(
        "world",
        help="simulated cars and phones at work against a keyserver, with a control API",
        description="Provision cars and people through the keyserver's REST API, then keep "
        "phones unlocking at the car (proximity first: Bluetooth), locking from afar (cloud), "
        "refreshing, listing, "
        "sharing and revoking, and attackers trying invalid keys over BLE; events go to "
        "--events. Control API: GET /status, /metrics; POST /surge, /clock, /failpoint, /stop.",
    )
    world.add_argument("--phones-url", type=_url, required=True, help="the phones' keyserver URL")
    world.add_argument("--cars-url", type=_url, help="the cars' channel URL (default: phones')")
    world.add_argument(
        "--root-key", type=_root_key, required=True,
        help="the keyserver's root public key: base64 of the DER SubjectPublicKeyInfo, or "
        "base64url of the 64-byte x||y (write --root-key=KEY: a key may begin with '-')",
    )  # fmt: skip
    world.add_argument(
        "--provisioning-secret-file", type=Path, required=True,
        help="a file holding the factory's provisioning secret",
    )  # fmt: skip
    world.add_argument("--cars", type=integer_in(1, MAX_CARS), default=8)
    world.add_argument("--phones", type=integer_in(1, MAX_PHONES), default=16)
    world.add_argument("--events", type=Path, required=True, help="the events file (JSON lines)")
    world.add_argument("--state-dir", type=Path, required=True, help="cars' and phones' state")
    world.add_argument(
        "--control-port", type=integer_in(0, 65535), default=0, help="0: a free port"
    )
    world.add_argument(
        "--max-seconds",
        type=seconds_up_to(MAX_SECONDS),
        default=3600.0,
        help="stop on its own after this long",
    )
    world.add_argument("--seed", type=int, help="for the jitter and choices (default: random)")


def run(args: argparse.Namespace) -> int:
    try:
        secret = _secret(args.provisioning_secret_file)
    except WorldError as error:
        print(f"phonekey world: {error}", file=sys.stderr)
        return 2
    settings = WorldSettings(
        phones_url=args.phones_url, cars_url=args.cars_url or args.phones_url,
        root=args.root_key, provisioning_secret=secret, events=args.events,
        state_dir=args.state_dir, cars=args.cars, phones=args.phones,
        max_seconds=args.max_seconds, seed=args.seed,
    )  # fmt: skip
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")  # fmt: skip
    return asyncio.run(_serve(settings, args.control_port))


async def _serve(settings: WorldSettings, port: int) -> int:
    world = World(settings)
    runner = web.AppRunner(create_control_app(world), access_log=None)
    await runner.setup()
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    code = 0
    try:
        listening.bind((LOOPBACK, port))
        await web.SockSite(runner, listening).start()
        url = f"http://{LOOPBACK}:{listening.getsockname()[1]}"
        print(f"world ready on {url}\n======== Running on {url} ========", flush=True)
        main = asyncio.current_task()
        assert main is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, main.cancel)
        try:
            await world.run()
        except WorldError as error:
            print(f"phonekey world: {error}", file=sys.stderr)
            code = 1
        except asyncio.CancelledError:
            code = 0  # told to go: no reconcile
    except OSError as error:
        print(f"phonekey world: cannot listen on port {port}: {error}", file=sys.stderr)
        code = 1
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await runner.cleanup()  # lets the /stop answer go out first
            await world.close()
        listening.close()
    return code


def _secret(path: Path) -> str:
    try:
        raw = path.read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as error:
        raise WorldError(f"cannot read the provisioning secret: {error.strerror}") from None
    secret = raw.decode(errors="replace").strip()
    if not secret or len(raw) > MAX_SECRET_BYTES:
        raise WorldError(f"{path}: not a provisioning secret (empty or over {MAX_SECRET_BYTES} B)")
    return secret


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise argparse.ArgumentTypeError(f"not an http(s) base URL: {text!r}")
    return text.rstrip("/")


def _root_key(text: str) -> ec.EllipticCurvePublicKey:
    try:
        # either alphabet, padded or not: DER is usually shown in standard base64
        raw = b64url_decode(text.strip().rstrip("=").replace("+", "-").replace("/", "_"))
        if len(raw) == 64:
            return load_point(raw)
        key = serialization.load_der_public_key(raw)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise argparse.ArgumentTypeError("not a P-256 public key (base64 DER or x||y)")
    return key
