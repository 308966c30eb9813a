"""The Ray Serve request router of inferline's deployments: prefix-cache affinity, else least loaded.

A request's affinity key (affinity.py) picks its owner replica by rendezvous hashing; it goes there unless
the owner has more than `max_imbalance_tokens` more tokens in flight than the least loaded replica, in
which case the least loaded one takes it (a hot prefix must not pile onto one replica while others idle).
Requests without a key go to the least loaded replica. Load is the tokens this router has sent to each
replica and not yet seen finish (fresh at every decision), or the replica's own report (refreshed every
`request_routing_stats_period_s`, and which counts other ingresses' requests too), whichever is higher.

Ray builds the router inside the deployment handle, in the process that calls the replicas; it registers
itself on the board (board.py) by deployment name, so that the same process's admin API shows its view."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from inferline.cluster import board
from inferline.cluster.affinity import owner_of

MAX_UNROUTED = 10_000
"""Choices remembered for requests not yet routed; the oldest go first (their requests were cancelled)."""


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, deployment: str = "", max_imbalance_tokens: int = 2048, **_: Any) -> None:
        self.deployment = deployment
        self.max_imbalance_tokens = max_imbalance_tokens
        self.decisions: Counter[str] = Counter()
        """"affinity": sent to the key's owner; "overloaded": the owner was too far ahead, sent to the
        least loaded; "least_loaded": no key."""
        self.sent_tokens: dict[str, int] = {}
        """Tokens in flight per replica (unique id) as this router counts them."""
        self._in_flight: dict[str, tuple[str, int]] = {}
        """Internal request id -> (replica, tokens) for the requests this router has routed."""
        self._deciding: dict[str, str] = {}
        """Internal request id -> the decision of its latest choice, counted once it is routed (Ray chooses
        again when the replicas it was offered were full or slow to answer)."""
        board.ROUTERS[deployment] = self

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_load = sorted(candidate_replicas, key=self.load_of)
        key = pending_request.kwargs.get("affinity_key") if pending_request is not None else None
        if key is None:
            self._decide(pending_request, "least_loaded")
            return [by_load]
        owner_id = owner_of(key, [r.replica_id.unique_id for r in candidate_replicas])
        owner = next(r for r in candidate_replicas if r.replica_id.unique_id == owner_id)
        if self.load_of(owner) - self.load_of(by_load[0]) > self.max_imbalance_tokens:
            self._decide(pending_request, "overloaded")
            return [by_load]
        self._decide(pending_request, "affinity")
        return [[owner], [r for r in by_load if r is not owner]]

    def _decide(self, pending_request: PendingRequest | None, decision: str) -> None:
        if pending_request is None:
            self.decisions[decision] += 1
        else:
            self._deciding[pending_request.metadata.internal_request_id] = decision
            if len(self._deciding) > MAX_UNROUTED:  # requests cancelled before they were routed
                del self._deciding[next(iter(self._deciding))]

    def load_of(self, replica: RunningReplica) -> int:
        reported = int(replica.routing_stats.get("load_tokens", 0))
        return max(reported, self.sent_tokens.get(replica.replica_id.unique_id, 0))

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        tokens = int(pending_request.kwargs.get("load_tokens", 0))
        replica = replica_id.unique_id
        request_id = pending_request.metadata.internal_request_id
        decision = self._deciding.pop(request_id, None)
        if decision is not None:
            self.decisions[decision] += 1
        self._in_flight[request_id] = (replica, tokens)
        self.sent_tokens[replica] = self.sent_tokens.get(replica, 0) + tokens

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        routed = self._in_flight.pop(internal_request_id, None)
        if routed is not None:
            replica, tokens = routed
            self.sent_tokens[replica] = max(self.sent_tokens.get(replica, 0) - tokens, 0)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.sent_tokens.pop(replica_id.unique_id, None)

    def view(self) -> dict[str, Any]:
        """What the admin API shows: the decisions so far and each replica's load as this router sees it."""
        replicas = {
            replica_id.unique_id: {
                "sent_tokens": self.sent_tokens.get(replica_id.unique_id, 0),
                **replica.routing_stats,
            }
            for replica_id, replica in self.curr_replicas.items()
        }
        return {"decisions": dict(self.decisions), "replicas": replicas}
