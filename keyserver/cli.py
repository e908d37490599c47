"""The ``keyserver`` command: ``serve`` the REST API, and ``keys …`` to manage issuer keys.

``keys`` runs where the root private key lives (an admin directory); ``keys publish`` hands a
keyserver's key directory the serving part only, which running keyservers pick up by themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from aiohttp import web

from keycore import ROLE_MAX_LIFETIME
from keyserver import journal_cli
from keyserver.app import create_app
from keyserver.config import load as load_config
from keyserver.errors import KeyserverError
from keyserver.keyring import KeyRingState, KeyRingStore
from keyserver.keyring_reload import open_key_ring
from keyserver.observability import configure_logging
from runtime.settings import refuse

DAY = 86_400


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyserver", description="phonekey keyserver")
    parser.add_argument("--version", action="version", version=version("phonekey"))
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the REST server")
    serve.add_argument("--config", type=Path, help="TOML file; PHONEKEY_* variables override it")
    keys = commands.add_parser("keys", help="issuer key ring: init, rotate, list, retire, publish")
    keys.add_argument(
        "--dir", type=Path, help="key directory (default: the one `keyserver serve` would use)"
    )
    keys.add_argument("--config", type=Path, help="`keyserver serve`'s TOML file, for --dir")
    which = keys.add_subparsers(dest="keys_command", required=True)
    init = which.add_parser("init", help="create the root key and an issuer ring (active + next)")
    init.add_argument("--key-lifetime-days", type=int, default=365)
    which.add_parser("rotate", help="next becomes active, active retires, a new next is made")
    listing = which.add_parser("list", help="show the ring")
    listing.add_argument("--json", action="store_true")
    retire = which.add_parser("retire", help="stop trusting a key at once (e.g. compromised)")
    retire.add_argument("kid", help="key id, 16 hex digits")
    publish = which.add_parser(
        "publish", help="write the serving part (no root private key) to a key directory"
    )
    publish.add_argument("target", type=Path, help="the key directory keyservers read")
    journal_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args.config)
    if args.command == "journal":
        return journal_cli.main(args)
    try:
        directory = args.dir or load_config(args.config).keys_path  # where serve looks
    except KeyserverError as error:
        return refuse("keyserver", error)
    store = KeyRingStore(directory)
    now = int(time.time())
    try:
        if args.keys_command == "init":
            if args.key_lifetime_days <= 0:
                raise KeyserverError("--key-lifetime-days must be positive")
            state = store.init(
                now=now,
                key_lifetime=args.key_lifetime_days * DAY,
                max_token_lifetime=max(ROLE_MAX_LIFETIME.values()),
            )
        elif args.keys_command == "rotate":
            state = store.rotate(now=now)
        elif args.keys_command == "retire":
            try:
                kid = bytes.fromhex(args.kid)
            except ValueError:
                raise KeyserverError(f"not a key id: {args.kid!r}") from None
            state = store.retire(kid, now=now)
        elif args.keys_command == "publish":
            state = store.publish(args.target)
            print(f"published to {args.target}: the serving part, no root private key")
        else:
            state = store.load()
            if args.json:
                print(json.dumps(_describe(state), indent=2))
                return 0
    except KeyserverError as error:
        print(f"keyserver: {error}", file=sys.stderr)
        return 1
    _print(state)
    return 0


def serve(config_path: Path | None) -> int:
    """Run until SIGINT/SIGTERM; in-flight requests get ``shutdown_grace_s`` to finish."""
    try:
        config = load_config(config_path)
    except KeyserverError as error:
        return refuse("keyserver", error)
    configure_logging(config.log_level)
    try:  # here, not in the app's start-up: a missing ring is one line and exit 2
        open_key_ring(config)
    except KeyserverError as error:
        return refuse("keyserver", error)
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        shutdown_timeout=config.shutdown_grace_s,
        access_log=None,  # the error middleware logs every request as JSON, with its id
        print=lambda message: print(message, file=sys.stderr),
    )
    return 0


def _describe(state: KeyRingState) -> dict[str, object]:
    return {
        "root_kid": state.root_kid.hex(),
        "trust_sequence": state.trust_sequence,
        "keys": [
            {
                "kid": k.kid.hex(),
                "status": k.status.value,
                "not_before": k.not_before,
                "not_after": k.not_after,
            }
            for k in state.ring.keys
        ],
    }


def _print(state: KeyRingState) -> None:
    info = _describe(state)
    print(f"root {info['root_kid']}  trust-store update sequence {state.trust_sequence}")
    for key in state.ring.keys:
        print(
            f"  {key.kid.hex()}  {key.status.value:8s}"
            f"  {_date(key.not_before)} → {_date(key.not_after)}"
        )


def _date(when: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(when))


if __name__ == "__main__":
    sys.exit(main())
