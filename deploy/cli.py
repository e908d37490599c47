"""The ``phonekey`` command: the demo and the benchmarks (later: stack, drills, fleet)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deploy import bench, demo


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phonekey", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the demonstration (offline unlock and denials)")
    bench_parser = commands.add_parser("bench", help="benchmarks with a same-run ceiling")
    which = bench_parser.add_subparsers(dest="bench", required=True)
    verify = which.add_parser("verify", help="the unlock decision against two raw ES256 verifies")
    verify.add_argument("--json", action="store_true", help="print the JSON report only")
    verify.add_argument("--iterations", type=_positive, default=3000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo.run()
    result = bench.bench_verify(args.iterations)
    if args.json:
        print(result.to_json())
    else:
        print(
            f"unlock decision  median {result.decision_us_median:8.1f} µs"
            f"  p99 {result.decision_us_p99:8.1f} µs\n"
            f"2 × raw ES256    median {result.raw_us_median:8.1f} µs"
            f"  p99 {result.raw_us_p99:8.1f} µs\n"
            f"ratio (medians)  {result.ratio:.3f}"
            f"   first contact (cold caches) {result.cold_ratio:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
