"""The `keyserver` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib.metadata import version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyserver")
    parser.add_argument("--version", action="version", version=version("phonekey"))
    parser.parse_args(argv)
    parser.print_help()
    return 0
