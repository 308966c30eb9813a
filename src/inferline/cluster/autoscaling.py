"""The autoscaling policy of inferline's deployments on Ray Serve: as many replicas as the token load,
the KV-cache usage and the queue wait need, whichever needs the most.

Ray's default counts ongoing requests, which for an LLM says little: one request may be 20 tokens or
2,000. Each replica reports its load (replica.py, `record_autoscaling_stats`); Ray averages it over its
look-back window and calls this policy on its control loop; Ray then applies min/max replicas and the
upscale and downscale delays to what the policy asks for."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray.serve.config import AutoscalingContext

from inferline.config import LocalDeploymentConfig

SIGNALS = ("load_tokens", "kv_usage", "queue_wait_s")
"""What each replica reports (replica.py, ReplicaLoad) and the policy scales on."""


@dataclass(frozen=True)
class ScalingDecision:
    num_replicas: int
    """Replicas the load needs (before Ray's min/max bounds and delays)."""
    reason: str
    """The signal that needs the most replicas, with its figures."""


def replicas_needed(
    loads: dict[str, list[float]],
    num_replicas: int,
    target_tokens: float,
    target_kv_usage: float,
    target_queue_wait_s: float,
) -> ScalingDecision:
    """`loads`: per signal ("load_tokens", "kv_usage", "queue_wait_s") one value per running replica.
    Tokens add up across replicas and are divided by the per-replica target; KV usage and queue wait are
    per replica, so their mean over target scales the current count (at least one replica while any load)."""
    tokens = sum(loads.get("load_tokens", []))
    needs = {
        "load_tokens": (
            math.ceil(tokens / target_tokens),
            f"{tokens:.0f} tokens in flight, target {target_tokens:g}",
        ),
    }
    for signal, target in (("kv_usage", target_kv_usage), ("queue_wait_s", target_queue_wait_s)):
        values = loads.get(signal, [])
        mean = sum(values) / len(values) if values else 0.0
        needs[signal] = (
            math.ceil(num_replicas * mean / target),
            f"mean {signal} {mean:.2f}, target {target:g}",
        )
    signal = max(needs, key=lambda s: needs[s][0])
    return ScalingDecision(needs[signal][0], f"{signal}: {needs[signal][1]}")


def scaling_view(deployment: LocalDeploymentConfig, replicas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The replicas routed to (`replicas`: the request router's view of each one's load) and what the policy
    makes of their loads, within min and max: what /admin/cluster, /admin/routes and the metrics show."""
    loads = {s: [float(r.get(s, 0.0)) for r in replicas.values()] for s in SIGNALS}
    bounds = deployment.replicas
    needed = replicas_needed(
        loads, len(replicas), bounds.target_tokens, bounds.target_kv_usage, bounds.target_queue_wait_s
    )
    return {
        "num_replicas_routed": len(replicas),
        "min_replicas": bounds.min,
        "max_replicas": bounds.max,
        "replicas_needed": min(max(needed.num_replicas, bounds.min), bounds.max),
        "reason": needed.reason,
    }


class TokenLoadPolicy:
    """Ray Serve's class-callable policy: built once per deployment with the targets of its config."""

    def __init__(self, target_tokens: float, target_kv_usage: float, target_queue_wait_s: float) -> None:
        self.targets = (target_tokens, target_kv_usage, target_queue_wait_s)

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        loads = {signal: list(values.values()) for signal, values in metrics.items()}
        decision = replicas_needed(loads, ctx.current_num_replicas, *self.targets)
        return decision.num_replicas, {**ctx.policy_state, "inferline_reason": decision.reason}
