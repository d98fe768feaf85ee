"""Small, dependency-free percentile helpers shared by every benchmark."""

from __future__ import annotations

import math


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def percentiles_ms(name: str, values: list[float], ps: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """``{name}_p{p}_ms`` for each ``p``, to the microsecond: the keys every figure table uses."""
    return {f"{name}_p{p}_ms": round(percentile(values, p), 3) for p in ps}
