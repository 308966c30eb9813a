"""Waiting sequences, by priority class, shared fairly between tenants within a class.

Fairness follows the Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language
Models", OSDI 2024): each tenant has a counter of the service it has received (weighted prompt and
output tokens); the next sequence admitted comes from the backlogged tenant with the smallest counter.
A tenant that was idle is lifted to the smallest counter among active tenants when it returns, so
idleness banks no credit and a flood cannot starve anyone who arrives later.
"""

from __future__ import annotations

from collections import Counter, deque

from inferline.engine.sequence import Sequence
from inferline.types import Priority


class TenantCounters:
    """Virtual token counters of tenants with sequences waiting or running."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.num_active: Counter[str] = Counter()
        self.last_departed = 0.0
        """Counter of the last tenant to go idle: the floor when a tenant arrives to an idle system."""

    def activate(self, tenant: str) -> None:
        if self.num_active[tenant] == 0:
            active = [self.counters[t] for t, n in self.num_active.items() if n > 0 and t != tenant]
            floor = min(active) if active else self.last_departed
            self.counters[tenant] = max(self.counters.get(tenant, 0.0), floor)
        self.num_active[tenant] += 1

    def deactivate(self, tenant: str) -> None:
        self.num_active[tenant] -= 1
        if self.num_active[tenant] <= 0:
            del self.num_active[tenant]
            self.last_departed = self.counters.get(tenant, 0.0)

    def charge(self, tenant: str, cost: float) -> None:
        self.counters[tenant] = self.counters.get(tenant, 0.0) + cost

    def get(self, tenant: str) -> float:
        return self.counters.get(tenant, 0.0)


class WaitingQueues:
    """Per class, per tenant FIFO queues; `peek` gives the next sequence to admit in a class."""

    def __init__(self, counters: TenantCounters) -> None:
        self.counters = counters
        self.queues: dict[Priority, dict[str, deque[Sequence]]] = {p: {} for p in Priority}

    def __len__(self) -> int:
        return sum(len(q) for tenants in self.queues.values() for q in tenants.values())

    def push(self, seq: Sequence, *, front: bool = False) -> None:
        queue = self.queues[seq.priority].setdefault(seq.tenant, deque())
        if front:
            queue.appendleft(seq)
        else:
            queue.append(seq)

    def peek(self, priority: Priority) -> Sequence | None:
        """Head of the backlogged tenant with the least service so far (ties: the older head)."""
        tenants = self.queues[priority]
        best: Sequence | None = None
        best_key: tuple[float, float] | None = None
        for tenant, queue in tenants.items():
            key = (self.counters.get(tenant), queue[0].request.arrival_time)
            if best_key is None or key < best_key:
                best, best_key = queue[0], key
        return best

    def remove(self, seq: Sequence) -> None:
        tenants = self.queues[seq.priority]
        queue = tenants[seq.tenant]
        queue.remove(seq)
        if not queue:
            del tenants[seq.tenant]

    def num_at_or_above(self, priority: Priority) -> int:
        """Waiting sequences of `priority` or a higher class: those a new one of `priority` queues behind."""
        return sum(len(q) for p in Priority if p >= priority for q in self.queues[p].values())

    def highest_waiting_priority(self) -> Priority | None:
        for priority in sorted(Priority, reverse=True):
            if self.queues[priority]:
                return priority
        return None

    def all(self) -> list[Sequence]:
        return [seq for tenants in self.queues.values() for q in tenants.values() for seq in q]
