"""What one replica reports about its load: read by the request router, the autoscaler and the admin API."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaLoad:
    load_tokens: int
    """Tokens the replica still has to process: each request's prompt plus the completion it may still
    produce (max_tokens, else the rest of the context), running and waiting. Non-LLMs: inputs in flight."""
    kv_usage: float
    """Fraction of the engine's KV-cache blocks held (0 for non-LLMs)."""
    queue_wait_s: float
    """The backend's estimate of how long a new request would wait before it starts."""
    num_in_flight: int
    """Requests accepted and not yet finished."""
    num_affinity_hits: int = 0
    """Requests whose affinity key this replica had served before (its prefix cache may hold it)."""
