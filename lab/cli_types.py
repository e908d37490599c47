"""Argument types shared by the ``phonekey`` subcommands: bounded numbers with a clear message."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds_up_to(maximum: float) -> Callable[[str], float]:
    """A duration in seconds, more than 0 and at most ``maximum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"must be in (0, {maximum:g}]")
        return value

    return parse


def integer_in(low: int, high: int) -> Callable[[str], int]:
    """An integer from ``low`` to ``high``, both included."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}…{high}")
        return value

    return parse
