"""The pure parts of the cluster: the affinity key, the owner of a key, the replicas a load needs, and
the deployment config's replica settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferline.cluster.affinity import affinity_key, owner_of
from inferline.cluster.autoscaling import replicas_needed
from inferline.config import LLMDeploymentConfig
from inferline.types import Request

SYSTEM = {"role": "system", "content": "You are a support agent for ACME. " * 20}


def test_requests_sharing_a_long_prefix_share_a_key_and_others_do_not() -> None:
    one = Request("a", messages=[SYSTEM, {"role": "user", "content": "Where is my order?"}])
    two = Request("b", messages=[SYSTEM, {"role": "user", "content": "Cancel my plan."}])
    other = Request("c", messages=[{"role": "user", "content": "Cancel my plan."}])
    assert affinity_key(one, 512) == affinity_key(two, 512)  # only the shared system prompt is hashed
    assert affinity_key(one, 4096) != affinity_key(two, 4096)
    assert affinity_key(other, 512) != affinity_key(two, 512)
    assert affinity_key(Request("d", prompt_text="Once upon a time"), 512) is not None
    assert affinity_key(Request("e"), 512) is None


def test_a_new_replica_takes_only_its_share_of_the_keys() -> None:
    keys = [f"key-{i}" for i in range(3000)]
    before = {k: owner_of(k, ["r1", "r2"]) for k in keys}
    after = {k: owner_of(k, ["r1", "r2", "r3"]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "r3" for k in moved)  # nothing moves between the replicas that stayed
    assert 0.25 < len(moved) / len(keys) < 0.42  # about a third goes to the new one
    assert 0.4 < sum(v == "r1" for v in before.values()) / len(keys) < 0.6


def test_replicas_follow_the_signal_that_needs_the_most() -> None:
    idle = replicas_needed({"load_tokens": [0, 0]}, 2, 4096, 0.8, 2.0)
    assert idle.num_replicas == 0  # Ray keeps replicas.min
    tokens = replicas_needed({"load_tokens": [6000, 5000], "kv_usage": [0.2, 0.3]}, 2, 4096, 0.8, 2.0)
    assert tokens.num_replicas == 3
    assert tokens.reason.startswith("load_tokens: 11000 tokens in flight")
    kv = replicas_needed({"load_tokens": [100, 100], "kv_usage": [0.95, 0.9]}, 2, 4096, 0.8, 2.0)
    assert (kv.num_replicas, kv.reason.split(":")[0]) == (3, "kv_usage")
    wait = replicas_needed({"load_tokens": [100], "queue_wait_s": [5.0]}, 1, 4096, 0.8, 2.0)
    assert (wait.num_replicas, wait.reason.split(":")[0]) == (3, "queue_wait_s")


def test_replicas_min_above_max_names_the_fix() -> None:
    with pytest.raises(ValidationError, match="replicas.min is 3 but replicas.max is 2: raise max"):
        LLMDeploymentConfig(name="m", source="default", replicas={"min": 3, "max": 2})
