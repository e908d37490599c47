"""The lab's one percentile: benchmarks, drills, the fleet, the surge and the demo all rank their
samples the same way, so their p50 and p99 figures compare."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The sample at ``fraction`` (0…1) of the sorted samples (nearest rank, no interpolation)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]
