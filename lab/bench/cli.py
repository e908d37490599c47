"""``phonekey bench verify|issue|ble``: the command line of the benchmarks, each against a ceiling
measured in the same run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lab.bench import ble as bench_ble
from lab.bench import issue as bench_issue
from lab.bench import verify as bench
from lab.cli_types import seconds_up_to
from lab.processes.base import ProcessError

MAX_BENCH_SECONDS = 600.0
MAX_CONCURRENCY = 1024


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def add_parser(commands: Any) -> None:
    bench_parser = commands.add_parser("bench", help="benchmarks with a same-run ceiling")
    which = bench_parser.add_subparsers(dest="bench", required=True)
    verify = which.add_parser("verify", help="the unlock decision against two raw ES256 verifies")
    verify.add_argument("--json", action="store_true", help="print the JSON report only")
    verify.add_argument("--iterations", type=_positive, default=3000)
    issue = which.add_parser(
        "issue", help="token refresh on one keyserver (Redis) against verify+sign alone"
    )
    issue.add_argument("--json", action="store_true", help="print the JSON report only")
    issue.add_argument(
        "--seconds",
        type=seconds_up_to(MAX_BENCH_SECONDS),
        default=10.0,
        help="timed run per server",
    )
    issue.add_argument("--concurrency", type=_positive, default=32, help="generator workers")
    ble = which.add_parser("ble", help="an unlock over the simulated BLE link against the decision")
    ble.add_argument("--json", action="store_true", help="print the JSON report only")
    ble.add_argument("--iterations", type=_positive, default=500)


def run(args: argparse.Namespace) -> int:
    if args.bench == "issue":
        return _bench_issue(args)
    if args.bench == "ble":
        return bench_ble.run(iterations=args.iterations, as_json=args.json)
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


def _bench_issue(args: argparse.Namespace) -> int:
    if args.concurrency > MAX_CONCURRENCY:
        print(f"phonekey: --concurrency is at most {MAX_CONCURRENCY}", file=sys.stderr)
        return 2
    try:
        result = bench_issue.bench_issue(seconds=args.seconds, concurrency=args.concurrency)
    except (bench_issue.BenchError, ProcessError) as error:
        print(f"phonekey: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(result.to_json())
    else:
        s = result.settings
        rows = (
            ("keyserver refresh", result.rps, result.p50_ms, result.p99_ms, result.errors),
            ("ceiling (verify+sign)", result.ceiling_rps, result.ceiling_p50_ms,
             result.ceiling_p99_ms, result.ceiling_errors),
            ("bare aiohttp", result.bare_rps, result.bare_p50_ms, result.bare_p99_ms,
             result.bare_errors),
        )  # fmt: skip
        for name, rps, p50, p99, errors in rows:
            print(
                f"{name:22s} {rps:9.1f} rps  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}"
            )
        print(f"ratio (rps / ceiling_rps)  {result.ratio:.3f}")
        for target, processes in result.cpu_us.items():
            split = " + ".join(f"{name} {us:.0f}" for name, us in processes.items())
            print(f"CPU µs per request, {target}: {split}")
        print(
            f"{s['seconds']:g} s per server, {s['concurrency']} workers, {s['store']} store,"
            f" keyserver log level {s['keyserver_log_level']}"
            f" ({s['keyserver_requests_logged']} requests logged), {s['cpus']} CPUs"
        )
        for failure in result.failures:
            print(f"failure: {failure}")
    return 0 if result.errors == 0 else 1
