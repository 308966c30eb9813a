"""Policies: given a route and the live state of its deployments, the order to try them in.

Each policy returns its pick first; the route's fallbacks follow. Weighted and canary splits draw a
number in [0, 1) from a hash of (route, caller) so a caller stays on one arm (sticky), or from the
router's seeded generator when the route is not sticky.
"""

from __future__ import annotations

import hashlib

from inferline.config import RouteConfig
from inferline.router.deployments import Deployment


def sticky_draw(route: str, key: str) -> float:
    digest = hashlib.blake2b(f"{route}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick_weighted(weights: dict[str, float], draw: float) -> str:
    """The arm whose share of the cumulative weights covers `draw`."""
    total = sum(weights.values())
    running = 0.0
    positive = [(name, w) for name, w in weights.items() if w > 0]
    for name, weight in positive:
        running += weight / total
        if draw < running:
            return name
    return positive[-1][0]


def order(
    route: RouteConfig, deployments: dict[str, Deployment], weights: dict[str, float], draw: float
) -> list[str]:
    """Deployment names in the order this route tries them (the policy's pick first)."""
    candidates = [deployments[n] for n in route.deployments]
    if route.policy == "weighted":
        pick = pick_weighted(weights, draw)
        ranked = [pick, *sorted((n for n in weights if n != pick), key=lambda n: -weights[n])]
    elif route.policy == "cheapest":
        ranked = [d.name for d in _cheapest(candidates)]
    elif route.policy == "fastest":
        ranked = [d.name for d in sorted(candidates, key=lambda d: d.estimated_first_result_s())]
    elif route.policy == "best_quality":
        ranked = [d.name for d in _best_quality(candidates, route.max_price_per_1m)]
    else:  # fixed, rag (its deployments in order), and cascade, whose stages the router tries in order
        ranked = list(route.deployments)
    return list(dict.fromkeys([*ranked, *route.fallbacks]))


def _cheapest(candidates: list[Deployment]) -> list[Deployment]:
    """The cheapest of those whose live first-token estimate meets their objective; when none does, the
    fastest first (a slow answer beats none), then the rest by price."""
    by_price = sorted(candidates, key=lambda d: d.blended_price_per_1m)
    meeting = [d for d in by_price if _meets_objective(d)]
    if meeting:
        return [*meeting, *(d for d in by_price if d not in meeting)]
    fastest = min(candidates, key=lambda d: d.estimated_first_result_s())
    return [fastest, *(d for d in by_price if d is not fastest)]


def _meets_objective(deployment: Deployment) -> bool:
    objective_ms = deployment.config.latency_objective_ms
    return objective_ms is None or deployment.estimated_first_result_s() * 1000 <= objective_ms


def _best_quality(candidates: list[Deployment], max_price_per_1m: float | None) -> list[Deployment]:
    """Highest quality under the price cap first; over-cap deployments only as a last resort is wrong
    for a cap, so they are left out entirely."""
    affordable = [
        d for d in candidates if max_price_per_1m is None or d.config.price_output_per_1m <= max_price_per_1m
    ]
    return sorted(affordable, key=lambda d: (-d.config.quality, d.blended_price_per_1m))
