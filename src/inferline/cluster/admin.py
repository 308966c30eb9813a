"""GET /admin/cluster: each Ray deployment's replicas, the autoscaler's target and the reason the token
load gives, and the request router's decisions; the same figures as Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from ray import serve

from inferline.cluster.autoscaling import scaling_view
from inferline.cluster.board import ROUTERS
from inferline.cluster.deploy import app_name
from inferline.config import LocalDeploymentConfig


def cluster_view(deployments: list[LocalDeploymentConfig]) -> dict[str, Any]:
    """What this process's request routers know: no call leaves the process (metrics read it too)."""
    views = {}
    for deployment in deployments:
        router = ROUTERS.get(deployment.name)
        routing = router.view() if router is not None else {"decisions": {}, "replicas": {}}
        scaling = scaling_view(deployment, routing["replicas"])
        views[deployment.name] = {
            "version": deployment.version,
            "num_replicas_routed": scaling["num_replicas_routed"],
            "min_replicas": scaling["min_replicas"],
            "max_replicas": scaling["max_replicas"],
            "autoscaling": {"replicas_needed": scaling["replicas_needed"], "reason": scaling["reason"]},
            "routing": routing,
        }
    return views


def cluster_admin_router(
    deployments: list[LocalDeploymentConfig], admin: Callable[..., Awaitable[None]]
) -> APIRouter:
    api = APIRouter(prefix="/admin", dependencies=[Depends(admin)])

    @api.get("/cluster")
    async def cluster() -> dict[str, Any]:
        views = cluster_view(deployments)
        applications = (await asyncio.to_thread(serve.status)).applications  # a call to Serve's controller
        for deployment in deployments:
            application = applications.get(app_name(deployment))
            status = application.deployments.get(deployment.name) if application is not None else None
            views[deployment.name]["status"] = status.status if status is not None else "NOT_DEPLOYED"
            views[deployment.name]["replica_states"] = dict(status.replica_states) if status else {}
        return {"deployments": views}

    return api


class ClusterCollector(Collector):
    """Replicas routed to, the replicas the load needs, and routing decisions, per deployment."""

    def __init__(self, deployments: list[LocalDeploymentConfig]) -> None:
        self.deployments = deployments

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        replicas = GaugeMetricFamily(
            "inferline_cluster_replicas", "Ray Serve replicas the router sends to.", labels=["deployment"]
        )
        needed = GaugeMetricFamily(
            "inferline_cluster_replicas_needed",
            "Replicas the token load, KV usage and queue wait need (within min and max).",
            labels=["deployment"],
        )
        decisions = CounterMetricFamily(
            "inferline_cluster_routing_decisions",
            "Requests routed to a replica: affinity, overloaded (affine replica too busy), least_loaded.",
            labels=["deployment", "decision"],
        )
        for name, view in cluster_view(self.deployments).items():
            replicas.add_metric([name], view["num_replicas_routed"])
            needed.add_metric([name], view["autoscaling"]["replicas_needed"])
            for decision, count in view["routing"]["decisions"].items():
                decisions.add_metric([name, decision], count)
        yield from (replicas, needed, decisions)
