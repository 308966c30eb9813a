"""A route's live state: its config, current weights, per-arm figures and canary."""

from __future__ import annotations

from typing import Any

from inferline.config import RouteConfig
from inferline.router.arm_stats import ArmStats
from inferline.router.canary import Canary
from inferline.router.deployments import DeploymentPool


class RouteState:
    def __init__(self, config: RouteConfig, implicit: bool = False) -> None:
        self.config = config
        self.implicit = implicit
        self.weights = dict(config.weights)
        window = config.canary.window if config.canary is not None else 200
        self.arms: dict[str, ArmStats] = {name: ArmStats(window) for name in config.members()}
        self.canary = Canary(config.name, config.canary) if config.canary is not None else None

    def judge_canary(self) -> None:
        """Let the canary (if any) compare its arms again after an outcome."""
        if self.canary is not None:
            config = self.canary.config
            self.canary.judge(self.arms[config.baseline], self.arms[config.candidate])

    def snapshot(self, pool: DeploymentPool) -> dict[str, Any]:
        arms = {}
        for name, stats in self.arms.items():
            deployment = pool.by_name[name]
            scaling = deployment.backend.stats().scaling if deployment.ready else None
            arms[name] = {
                **stats.snapshot(),
                "weight": self.weights.get(name),
                "circuit": deployment.breaker.state,
                "ready": deployment.ready,
                "in_flight": deployment.in_flight,
                "waiting": deployment.waiting,
                "estimated_wait_s": round(deployment.estimated_wait_s(), 4),
                "estimated_first_token_s": round(deployment.estimated_first_result_s(), 4),
                **({"replicas": scaling} if scaling is not None else {}),
            }
        return {
            "policy": self.config.policy,
            "arms": arms,
            "canary": self.canary.snapshot() if self.canary is not None else None,
            "degrade_to": self.config.degrade_to,
            "fallbacks": self.config.fallbacks,
        }
