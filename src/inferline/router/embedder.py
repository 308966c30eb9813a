"""Embeddings for retrieval (vector stores, the rag policy, the semantic cache), sent through the router
so they are queued, limited and metered to the caller's tenant like any /v1/embeddings request."""

from __future__ import annotations

import numpy as np

from inferline.backends.base import EmbeddingResult
from inferline.errors import InvalidRequestError
from inferline.retrieval.stores import Embedder, EmbeddingModel
from inferline.router.deployments import Deployment
from inferline.router.request import Caller, WorstCase
from inferline.router.router import Router


def embedding_deployment(router: Router, configured: str | None) -> Deployment:
    """The configured embedding deployment, else the first of kind 'embedding'."""
    if configured is not None:
        return router.pool.find(configured)
    for deployment in router.pool.deployments:
        if deployment.config.kind == "embedding":
            return deployment
    raise InvalidRequestError(
        "this server has no embedding deployment: add one of kind 'embedding' (e.g. source "
        "all-minilm-l6-v2) to embed vector stores and semantic cache keys",
        "vector_stores.embedding_deployment",
    )


def embedder(router: Router, configured: str | None, caller: Caller) -> Embedder:
    deployment = embedding_deployment(router, configured)

    async def embed(texts: list[str]) -> np.ndarray:
        async def attempt(chosen: Deployment, final: bool) -> EmbeddingResult:
            return await chosen.within(chosen.backend.embed(texts))

        worst_case = WorstCase(sum(len(t.encode()) for t in texts), 0)
        routed = await router.run(deployment.name, caller, attempt, worst_case)
        await routed.complete(routed.value.num_tokens, 0)
        return routed.value.vectors

    return Embedder(EmbeddingModel(deployment.name, deployment.config.version), embed)
