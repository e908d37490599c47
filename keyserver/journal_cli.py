"""``keyserver journal replay``: an operator replays the outage journal of a keyserver that is gone.

A keyserver journals the writes it accepts while the store is down (keyserver.journal) and
replays them once the store answers, at the latest when it stops (its shutdown drain) or when a
keyserver next starts on the same data directory. A keyserver that stopped while the store was
still down and will not come back (scaled down, its volume moved) leaves its journal behind;
this command replays it against the store the configuration names, prints one line with what it
did, and tells the running keyservers which cars to push (keyserver.replay.announce).

Exit codes: 0 when the journal holds no more work; 1 when work is left (the store did not answer,
or an operation must wait: run it again) or the journal cannot be read; 2 for a bad
configuration. Running it while a keyserver also replays the same journal is safe: an operation
applied twice has the effect of applying it once.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

from keyserver.acceptance import Acceptor
from keyserver.clock import process_clock
from keyserver.config import Config
from keyserver.config import load as load_config
from keyserver.errors import KeyserverError, StoreUnavailable
from keyserver.hub import ChannelHub
from keyserver.issuance import Holders
from keyserver.journal import DONE, PENDING, REFUSED, Journal, NotYet
from keyserver.replay import Replayer, announce
from keyserver.resources import open_store
from runtime.settings import refuse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``journal replay`` to the ``keyserver`` command's subcommands."""
    journal = commands.add_parser("journal", help="the outage journal of a keyserver")
    which = journal.add_subparsers(dest="journal_command", required=True)
    replay = which.add_parser(
        "replay", help="replay a journal into the configured store (a keyserver that is gone)"
    )
    replay.add_argument("--config", type=Path, help="TOML file; PHONEKEY_* variables override it")
    replay.add_argument(
        "--data-dir", type=Path, help="the gone keyserver's data directory (default: the config's)"
    )


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except KeyserverError as error:
        return refuse("keyserver", error)
    if args.data_dir is not None:
        config = replace(config, data_dir=args.data_dir)
    return asyncio.run(replay_journal(config))


async def replay_journal(config: Config) -> int:
    path = config.journal_path
    if not path.is_file():  # never a new, empty journal for a mistyped directory
        print(f"keyserver: no journal at {path}", file=sys.stderr)
        return 1
    try:
        journal = Journal.open(path)
        before = journal.counts()
    except (sqlite3.Error, OSError) as error:
        print(f"keyserver: journal {path}: {error}", file=sys.stderr)
        return 1
    try:
        problem = await _replay(config, journal)
        after, left = journal.counts(), journal.has_work()
    finally:
        journal.close()
    done, refused = after[DONE] - before[DONE], after[REFUSED] - before[REFUSED]
    summary = f"journal {path}: {done} done, {refused} refused, {after[PENDING]} pending"
    if problem is not None:
        print(f"keyserver: {summary}; {problem}: run it again", file=sys.stderr)
        return 1
    print(summary)
    return 1 if left else 0


async def _replay(config: Config, journal: Journal) -> str | None:
    """Replay ``journal`` into the configured store; None, or why work is left."""
    try:
        store = await open_store(config)
    except (KeyserverError, sqlite3.Error, OSError) as error:
        return f"the store: {error}"
    # the replay's services, on the store as it is and a hub with no cars (none is connected
    # to this process)
    hub = ChannelHub()
    holders = Holders(store, hub, process_clock)
    acceptor = Acceptor(store, holders, process_clock)
    replayer = Replayer(store, hub, journal, holders, acceptor, process_clock)
    problem: str | None = None
    try:
        await replayer.replay_once()
    except StoreUnavailable:
        problem = "the store is unavailable"
    except NotYet as error:
        problem = str(error)
    except sqlite3.Error as error:
        problem = f"the journal: {error}"
    finally:
        try:
            await _announce(store, replayer.unannounced)
        except StoreUnavailable:
            pass  # a doorbell: each car gets the ledger at its next (re)connection anyway
        finally:
            await store.close()
    return problem


async def _announce(store: object, vins: set[str]) -> None:
    """Running keyservers push the cars connected to them (Redis only: SQLite is one node)."""
    from keyserver.store.redis import RedisStore

    if vins and isinstance(store, RedisStore):
        await announce(vins, channel=store.hub.channel, publish=store.hub.publish)
