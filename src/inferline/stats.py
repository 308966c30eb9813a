"""The one percentile every figure in inferline is computed with.

Linear interpolation between the closest ranks: on the sorted values v[0..n-1] the rank is
r = q/100 * (n - 1) and the result v[floor(r)] + (r - floor(r)) * (v[floor(r) + 1] - v[floor(r)]).
This is NumPy's default (Hyndman and Fan's type 7), PostgreSQL's `percentile_cont` and what
`vllm bench serve` reports, so /v1/usage, the canary, the dashboard and the benchmarks all mean the
same thing by "p95", whichever database or tool computed it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float:
    """The q-th percentile (q in [0, 100]) of `values`; `presorted` skips the sort for callers that
    keep their values in order. Raises ValueError on no values: callers decide what "none" shows as."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100]; got {q}")
    ordered = values if presorted else sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])
