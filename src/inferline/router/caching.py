"""Routes' response caches: the keys, when to bypass, and metering a hit.

A key is a hash of: the tenant, the route, every member deployment's name and version (a new version
is a new key space: the old entries are never found again and age out), anything else that shaped the
answer (`context`, e.g. a rag store's contents), the request's sampling settings and tools, and the
conversation. The semantic scope is the same hash without the last message: the conversation before it
must match exactly, and only the last message is compared by embedding, so a paraphrased question hits
while a different history never does. Sampled requests (temperature > 0, the OpenAI default, or n > 1)
bypass the cache unless the route sets `cache_sampled`, since their answers are meant to vary.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from inferline.config import CacheConfig
from inferline.retrieval.cache import CachedAnswer, CacheHit, MemoryCacheStore, RedisCacheStore, ResponseCache
from inferline.router.embedder import embedder
from inferline.router.request import Caller
from inferline.router.router import Router
from inferline.types import UsageRecord

CacheStatus = Literal["hit", "miss", "bypass"]


@dataclass(frozen=True)
class CacheLookup:
    status: CacheStatus
    hit: CacheHit | None = None
    cache: ResponseCache | None = None
    key: str = ""
    scope: str = ""
    text: str = ""
    """The last message, compared semantically."""
    vector: np.ndarray | None = None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {"x-inferline-cache": self.status}
        if self.hit is not None and self.hit.similarity is not None:
            headers["x-inferline-cache-similarity"] = f"{self.hit.similarity:.4f}"
        return headers

    async def store(self, answer: CachedAnswer) -> None:
        """Keep a missed request's answer (delivered whole) for the next one."""
        if self.cache is not None:
            await self.cache.put(self.key, self.scope, self.text, self.vector, answer)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RouteCaches:
    """The cache of each route that configures one."""

    def __init__(self, router: Router, redis_url: str | None, embedding_deployment: str | None) -> None:
        self.router = router
        self.embedding_deployment = embedding_deployment
        self.caches: dict[str, tuple[CacheConfig, ResponseCache]] = {}
        for state in router.routes.values():
            config = state.config.cache
            if config is None:
                continue
            store: MemoryCacheStore | RedisCacheStore = MemoryCacheStore(config.max_entries)
            if config.store == "redis" and redis_url is not None:  # ServerConfig requires the URL
                store = RedisCacheStore(redis_url)
            cache = ResponseCache(store, config.ttl_s, config.semantic_threshold)
            self.caches[state.config.name] = (config, cache)

    def versions(self, route: str) -> list[tuple[str, str]]:
        members = self.router.resolve(route).config.members()
        return sorted((name, self.router.pool.find(name).config.version) for name in members)

    def bypass(self, route: str) -> CacheLookup | None:
        """A request the route's cache cannot key (not one text): None when the route has no cache."""
        return CacheLookup("bypass") if self.router.resolve(route).config.name in self.caches else None

    async def lookup(
        self,
        route: str,
        caller: Caller,
        settings: dict[str, Any],
        history: list[Any],
        last_message: str,
        sampled: bool,
        context: str = "",
    ) -> CacheLookup | None:
        """None when the route has no cache. `settings`: everything in the request but its messages;
        `history`: the messages before the last one; `context`: anything else the answer depends on."""
        found = self.caches.get(self.router.resolve(route).config.name)
        if found is None:
            return None
        config, cache = found
        if sampled and not config.cache_sampled:
            return CacheLookup("bypass")
        scope = _digest(
            {
                "tenant": caller.principal.tenant,
                "route": route,
                "versions": self.versions(route),
                "context": context,
                "settings": settings,
                "history": history,
            }
        )
        key = _digest({"scope": scope, "last": last_message})
        vector = None
        if config.semantic_threshold is not None:
            embedding = config.embedding_deployment or self.embedding_deployment
            vectors = await embedder(self.router, embedding, caller).embed([last_message])
            vector = vectors[0] / max(float(np.linalg.norm(vectors[0])), 1e-12)
        hit = await cache.lookup(key, scope, last_message, vector)
        return CacheLookup("hit" if hit is not None else "miss", hit, cache, key, scope, last_message, vector)

    def record_hit(self, route: str, caller: Caller, answer: CachedAnswer, latency_s: float) -> None:
        """Meter a served hit: outcome 'cached', priced at the route's cache price."""
        state = self.router.resolve(route)
        config = self.caches[state.config.name][0]
        tokens = answer.prompt_tokens + answer.completion_tokens
        self.router.recorder.emit(
            UsageRecord(
                request_id=caller.request_id,
                tenant=caller.principal.tenant,
                route=state.config.name,
                deployment="cache",
                model_version=",".join(f"{n}:{v}" for n, v in self.versions(route)),
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                ttft_s=latency_s,
                latency_s=latency_s,
                outcome="cached",
                cost=tokens * config.price_per_1m / 1e6,
                policy=state.config.policy,
                endpoint=caller.endpoint,
                finished_at=time.time(),
            )
        )

    async def close(self) -> None:
        for _, cache in self.caches.values():
            await cache.store.close()
