"""Each local deployment as a Ray Serve application of one deployment: its replicas, their resources,
the autoscaling policy and the request router. Deploying a new version of it is Serve's rolling update:
new replicas start and take traffic as they become ready, and the old ones drain before they stop."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from inferline.cluster.autoscaling import TokenLoadPolicy
from inferline.cluster.replica import Replica
from inferline.cluster.routing import PrefixAffinityRouter
from inferline.config import LLMDeploymentConfig, LocalDeploymentConfig

APP_PREFIX = "inferline-"
HEALTH_CHECK_PERIOD_S = 2.0
"""How often Serve asks each replica whether its backend still runs; a dead actor is seen at once."""
STATS_PERIOD_S = 1.0
"""How often replicas report their load to the router and the autoscaler."""

_deploying = asyncio.Lock()
"""One `serve.run` at a time from this process: each blocks a thread until its replicas are up."""


def app_name(deployment: LocalDeploymentConfig) -> str:
    return APP_PREFIX + deployment.name


def replica_options(deployment: LocalDeploymentConfig) -> dict[str, Any]:
    """The Serve deployment options that the inferline deployment config sets."""
    replicas, resources = deployment.replicas, deployment.resources
    actor: dict[str, Any] = {
        "num_cpus": resources.num_cpus,
        "num_gpus": resources.num_gpus,
        # The replica's methods run on its own event loop, not on a thread beside it: each streamed item
        # then skips a hop between threads. Nothing in Replica blocks its loop (engines and runners
        # compute on threads of their own).
        "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
    }
    if resources.memory_gb is not None:
        actor["memory"] = int(resources.memory_gb * 1024**3)
    # A replica takes what its own queue takes; past that the request waits in the handle, where the
    # router may still send it to another replica.
    running = (
        deployment.engine.max_num_seqs
        if isinstance(deployment, LLMDeploymentConfig)
        else deployment.max_batch_size
    )
    router: dict[str, Any] = {
        "request_router_class": PrefixAffinityRouter,
        "request_router_kwargs": {
            "deployment": deployment.name,
            "max_imbalance_tokens": replicas.max_imbalance_tokens,
        },
        "request_routing_stats_period_s": STATS_PERIOD_S,
    }
    options: dict[str, Any] = {
        "name": deployment.name,
        "ray_actor_options": actor,
        "max_ongoing_requests": running + deployment.max_queued_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "request_router_config": RequestRouterConfig(**router),
    }
    if replicas.min == replicas.max:
        options["num_replicas"] = replicas.min
        return options
    options["autoscaling_config"] = AutoscalingConfig(
        min_replicas=replicas.min,
        max_replicas=replicas.max,
        initial_replicas=max(replicas.min, 1),
        upscale_delay_s=replicas.upscale_delay_s,
        downscale_delay_s=replicas.downscale_delay_s,
        metrics_interval_s=STATS_PERIOD_S,
        look_back_period_s=max(2 * STATS_PERIOD_S, min(replicas.upscale_delay_s, 10.0)),
        policy=AutoscalingPolicy(
            policy_function=TokenLoadPolicy,
            policy_kwargs={
                "target_tokens": replicas.target_tokens,
                "target_kv_usage": replicas.target_kv_usage,
                "target_queue_wait_s": replicas.target_queue_wait_s,
            },
        ),
    )
    return options


async def deploy(deployment: LocalDeploymentConfig) -> DeploymentHandle:
    """Start (or roll to this version) the deployment's replicas; returns once they serve."""
    app = serve.deployment(**replica_options(deployment))(Replica)
    async with _deploying:
        handle: DeploymentHandle = await asyncio.to_thread(
            serve.run,
            app.bind(deployment),
            name=app_name(deployment),
            route_prefix=None,
        )
    return handle
