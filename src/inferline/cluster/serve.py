"""`inferline serve --ray`: the same server config, with every local deployment on Ray Serve replicas.

The HTTP app (auth, router, quotas, meters, admin API) runs in this process, the Ray driver, in front of
the replicas; remote deployments are called from here as without Ray. On a cluster started here (`--ray`
without an address) everything stops on exit; on an existing cluster (`--ray auto` or an address) only
this server's Serve applications are deleted."""

from __future__ import annotations

import logging
import os

import ray
from fastapi import FastAPI, Request
from ray import serve

from inferline.backends.base import Backend
from inferline.cluster.admin import ClusterCollector, cluster_admin_router
from inferline.cluster.backend import RayReplicaBackend
from inferline.cluster.deploy import app_name
from inferline.config import DeploymentConfig, LocalDeploymentBase, LocalDeploymentConfig, ServerConfig
from inferline.router.deployments import build_backend
from inferline.server.auth import Authenticator
from inferline.server.serve import serve as serve_http

logger = logging.getLogger(__name__)


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address` ("auto": the one this machine belongs to), or start one
    here when None (with `num_cpus` cores, all of them by default)."""
    ray.init(
        # "local", not None: None would join a cluster that `ray start` left noted on this machine.
        address=address or "local",
        num_cpus=num_cpus if address is None else None,
        include_dashboard=False,
        log_to_driver=False,
        # Replicas import inferline from the same sources as this process.
        runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}}
        if address is None
        else None,
    )


def stop_ray(deployments: list[LocalDeploymentConfig], started_here: bool) -> None:
    """A Ray instance started here stops with its replicas (and without asking Serve, whose controller
    may already be gone: Ctrl-C reaches Ray's own processes too); on a shared cluster only this server's
    applications go."""
    if not started_here:
        for deployment in deployments:
            serve.delete(app_name(deployment))
    ray.shutdown()


def build_cluster_backend(deployment: DeploymentConfig) -> Backend:
    if isinstance(deployment, LocalDeploymentBase):
        return RayReplicaBackend(deployment)
    return build_backend(deployment)


def add_cluster_admin(config: ServerConfig, app: FastAPI) -> None:
    local = local_deployments(config)
    auth = Authenticator(config)

    async def admin(request: Request) -> None:
        auth.admin(request.headers.get("authorization"))

    app.include_router(cluster_admin_router(local, admin))
    app.state.metrics.registry.register(ClusterCollector(local))


def local_deployments(config: ServerConfig) -> list[LocalDeploymentConfig]:
    return [d for d in config.deployments if isinstance(d, LocalDeploymentBase)]


def serve_on_ray(config: ServerConfig, address: str | None, num_cpus: int | None = None) -> int:
    start_ray(address, num_cpus)
    serve.start(proxy_location="Disabled")  # requests come in through inferline's app, not Serve's proxy
    try:
        return serve_http(
            config, build=build_cluster_backend, extend=lambda app: add_cluster_admin(config, app)
        )
    finally:
        stop_ray(local_deployments(config), started_here=address is None)
