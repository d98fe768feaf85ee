"""Small, dependency-free percentile helpers shared by every benchmark."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def percentiles_ms(name: str, values: list[float], ps: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """``{name}_p{p}_ms`` for each ``p``, to the microsecond: the keys every figure table uses."""
    return {f"{name}_p{p}_ms": round(percentile(values, p), 3) for p in ps}


def ratio_interval(pairs: Sequence[tuple[float, float]], p: float, level: float = 0.95,
                   rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """How far the ratio of two percentiles could have landed in another run of the same length.

    A p99 of a few hundred taps is set by their three or so slowest, and a
    ratio of two such figures swings run to run well beyond any difference
    worth finding. This is the percentile bootstrap of ``percentile(firsts, p)
    / percentile(seconds, p)``: whole pairs are drawn again, with replacement,
    because each pair ran back to back and a noisy spell of the machine
    weighs on both its halves. Seeded, so that the same samples give the same
    interval.
    """
    if not pairs:
        raise ValueError("no samples")
    if not 0 < level < 1:
        raise ValueError(f"level {level} is not between 0 and 1")
    draw = random.Random(seed).choices
    ratios = sorted(percentile([a for a, _ in sample], p) / percentile([b for _, b in sample], p)
                    for sample in (draw(pairs, k=len(pairs)) for _ in range(rounds)))
    tail = (1 - level) / 2
    return ratios[int(tail * rounds)], ratios[min(rounds - 1, math.ceil((1 - tail) * rounds) - 1)]
