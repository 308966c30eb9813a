"""The deployments this server serves, by name and alias, and their loading state."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from inferline.backends.base import Backend
from inferline.config import DeploymentConfig
from inferline.errors import ModelNotFoundError
from inferline.server.errors import HTTPError

logger = logging.getLogger(__name__)


def build_backend(deployment: DeploymentConfig) -> Backend:
    if deployment.kind == "llm":
        from inferline.backends.llm import LLMBackend

        return LLMBackend(deployment)
    if deployment.kind == "embedding":
        from inferline.backends.embedding import EmbeddingBackend

        return EmbeddingBackend(deployment)
    from inferline.backends.onnx import OnnxBackend

    return OnnxBackend(deployment)


@dataclass
class Deployment:
    config: DeploymentConfig
    backend: Backend
    ready: bool = False
    error: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {
            "x-inferline-model": self.config.name,
            "x-inferline-deployment": f"{self.config.name}@{self.config.version}",
            "x-inferline-version": self.config.version,
        }


class Catalog:
    def __init__(self, deployments: list[DeploymentConfig], backends: list[Backend] | None = None) -> None:
        built = backends if backends is not None else [build_backend(d) for d in deployments]
        self.deployments = [Deployment(d, b) for d, b in zip(deployments, built, strict=True)]
        self.by_name: dict[str, Deployment] = {}
        for deployment in self.deployments:
            for name in [deployment.config.name, *deployment.config.aliases]:
                if name in self.by_name:
                    raise ValueError(f"model name {name!r} is used by two deployments; names must be unique")
                self.by_name[name] = deployment

    def find(self, name: str) -> Deployment:
        """The deployment of that name or alias, ready or not; 404 for unknown names."""
        deployment = self.by_name.get(name)
        if deployment is None:
            known = ", ".join(sorted(self.by_name))
            raise ModelNotFoundError(f"model {name!r} does not exist; this server serves: {known}")
        return deployment

    def get(self, name: str) -> Deployment:
        """A ready deployment; 404 for unknown names, 503 while it is still loading."""
        deployment = self.find(name)
        if not deployment.ready:
            reason = f"failed to load: {deployment.error}" if deployment.error else "is still loading"
            raise HTTPError(
                503, f"model {name!r} {reason}", "service_unavailable", "model", {"retry-after": "2"}
            )
        return deployment

    @property
    def all_ready(self) -> bool:
        return all(d.ready for d in self.deployments)

    async def load_all(self) -> None:
        """Load every deployment; one that fails is reported and the others still serve."""

        async def load(deployment: Deployment) -> None:
            try:
                await deployment.backend.load()
                deployment.ready = True
                logger.info("model %s ready", deployment.config.name)
            except Exception as error:
                deployment.error = str(error)
                logger.exception("model %s failed to load", deployment.config.name)

        await asyncio.gather(*(load(d) for d in self.deployments))

    async def unload_all(self) -> None:
        for deployment in self.deployments:
            deployment.ready = False
            await deployment.backend.unload()
