"""Response caches: an exact cache (the same normalised request, the same answer) and a semantic one
(a conversation that embeds within a cosine threshold of an earlier one), in this process or in Redis.

Safety is in the keys, which the caller builds (router/caching.py): each names the tenant, the route,
the versions of everything that shaped the answer, the sampling settings and the tools, so an entry can
only be found by a request that would have been answered the same way by the same tenant. A semantic
entry is a vector and its text, filed under its `scope` (the key without the conversation's last
message), pointing at an exact key; an entry whose answer has expired is simply not found.

Sentence embeddings blur what decides many answers: "Is the museum open on Sundays?" and "... closed
on Sundays?" embed at 0.96, "Convert 5 miles" and "Convert 50 miles" higher still. So a semantic
match must also name the same numbers and agree on negation (`same_specifics`);
benchmarks/retrieval.py measures precision and recall with and without this check.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Protocol, cast

import numpy as np

MAX_NEIGHBOURS_PER_SCOPE = 1000
"""Semantic entries compared per lookup (the most recent); one matrix-vector product of this size is
well under a millisecond."""


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATION = re.compile(r"\b(?:not|no|never|none|nothing|without|cannot)\b|n't\b", re.IGNORECASE)


def same_specifics(first: str, second: str) -> bool:
    """Whether two texts name the same numbers and agree on negation, which embeddings blur."""
    return sorted(_NUMBER.findall(first)) == sorted(_NUMBER.findall(second)) and bool(
        _NEGATION.search(first)
    ) == bool(_NEGATION.search(second))


@dataclass(frozen=True)
class CachedAnswer:
    texts: list[str]
    """Each choice's text as the model produced it (tool calls are parsed again when served)."""
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> CachedAnswer:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class CacheHit:
    answer: CachedAnswer
    similarity: float | None
    """Semantic hits: the cosine similarity of the conversations; None for exact hits."""


@dataclass(frozen=True)
class Neighbour:
    vector: np.ndarray
    """The unit-length embedding of `text`."""
    text: str
    """The message it embeds."""
    key: str
    """The exact key its answer is under."""


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def neighbours(self, scope: str) -> list[Neighbour]:
        """The scope's semantic entries, newest last."""

    async def add_neighbour(self, scope: str, entry: Neighbour, ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCacheStore:
    """This process only; the least recently used entries go first beyond `max_entries`."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._values: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._scopes: dict[str, list[tuple[Neighbour, float]]] = {}

    async def get(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return entry[0]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._values[key] = (value, time.monotonic() + ttl_s)
        self._values.move_to_end(key)
        while len(self._values) > self.max_entries:
            self._values.popitem(last=False)

    async def neighbours(self, scope: str) -> list[Neighbour]:
        now = time.monotonic()
        live = [e for e in self._scopes.get(scope, []) if e[1] >= now]
        self._scopes[scope] = live
        return [entry for entry, _ in live]

    async def add_neighbour(self, scope: str, entry: Neighbour, ttl_s: float) -> None:
        entries = self._scopes.setdefault(scope, [])
        entries.append((entry, time.monotonic() + ttl_s))
        del entries[: max(0, len(entries) - MAX_NEIGHBOURS_PER_SCOPE)]

    async def close(self) -> None:
        self._values.clear()
        self._scopes.clear()


class RedisCacheStore:
    """Shared by every replica using the same Redis; entries expire by Redis's own TTLs."""

    PREFIX = "inferline:cache:"

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis  # 0.11 s of every start otherwise: only caches in Redis need it

        self.redis = Redis.from_url(url)

    async def get(self, key: str) -> bytes | None:
        value = await self.redis.get(self.PREFIX + key)
        return cast(bytes | None, value)  # the client is not set to decode responses

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.redis.set(self.PREFIX + key, value, px=int(ttl_s * 1000))

    async def neighbours(self, scope: str) -> list[Neighbour]:
        entries = cast(list[bytes], await self.redis.lrange(self.PREFIX + "scope:" + scope, 0, -1))
        found = []
        for entry in entries:  # key \0 text \0 float32 vector (neither key nor text holds a \0)
            key, text, vector = entry.split(b"\0", 2)
            found.append(Neighbour(np.frombuffer(vector, np.float32), text.decode(), key.decode()))
        return found

    async def add_neighbour(self, scope: str, entry: Neighbour, ttl_s: float) -> None:
        name = self.PREFIX + "scope:" + scope
        text = entry.text.replace("\0", " ").encode()
        packed = entry.key.encode() + b"\0" + text + b"\0" + entry.vector.astype(np.float32).tobytes()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(name, packed)
            pipe.ltrim(name, -MAX_NEIGHBOURS_PER_SCOPE, -1)
            pipe.pexpire(name, int(ttl_s * 1000))
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()


class ResponseCache:
    """`lookup` then, on a miss, `put` the answer once it has been delivered whole."""

    def __init__(self, store: CacheStore, ttl_s: float, semantic_threshold: float | None) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.semantic_threshold = semantic_threshold

    async def lookup(self, key: str, scope: str, text: str, vector: np.ndarray | None) -> CacheHit | None:
        """The exact entry, else the most similar semantic one over the threshold that names the same
        specifics as `text` (whose unit embedding is `vector`)."""
        exact = await self.store.get(key)
        if exact is not None:
            return CacheHit(CachedAnswer.loads(exact), None)
        if vector is None or self.semantic_threshold is None:
            return None
        neighbours = await self.store.neighbours(scope)
        if not neighbours:
            return None
        similarities = np.stack([n.vector for n in neighbours]) @ vector
        for index in np.argsort(-similarities):
            if similarities[index] < self.semantic_threshold:
                return None
            if not same_specifics(text, neighbours[index].text):
                continue
            found = await self.store.get(neighbours[index].key)
            if found is not None:
                return CacheHit(CachedAnswer.loads(found), float(similarities[index]))
        return None

    async def put(
        self, key: str, scope: str, text: str, vector: np.ndarray | None, answer: CachedAnswer
    ) -> None:
        await self.store.put(key, answer.dumps(), self.ttl_s)
        if vector is not None and self.semantic_threshold is not None:
            await self.store.add_neighbour(scope, Neighbour(vector, text, key), self.ttl_s)
