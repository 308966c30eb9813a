"""How a local deployment runs on a Ray cluster (`inferline serve --ray`): its replicas, what each one
holds, and when replicas are added or taken away. Read only with --ray; a single-process server ignores it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReplicasConfig(BaseModel):
    """The Ray Serve replicas of one deployment, each holding one engine (or runner), and the token load
    they are scaled and routed on.

    Ray Serve scales on ongoing requests by default; for an LLM a request of 20 tokens and one of 2,000
    are not the same load, so replicas report the tokens they still have to process (prompt plus the
    completion still to come, running and waiting), their KV-cache usage and their queue wait, and the
    deployment is sized so that none of the three is over its target per replica."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(1, ge=0, le=1024, description="Fewest replicas (0 scales to zero when idle).")
    max: int = Field(1, ge=1, le=1024, description="Most replicas.")
    target_tokens: int = Field(
        4096,
        ge=1,
        le=100_000_000,
        description="Tokens in flight per replica (prompt plus completion still to produce, running and "
        "waiting) above which a replica is added.",
    )
    target_kv_usage: float = Field(
        0.8, gt=0, le=1, description="KV-cache usage per replica above which a replica is added."
    )
    target_queue_wait_s: float = Field(
        2.0, gt=0, le=3600, description="Estimated queue wait per replica above which a replica is added."
    )
    upscale_delay_s: float = Field(
        10.0, ge=0, le=86_400, description="How long the load must stay above target before scaling up."
    )
    downscale_delay_s: float = Field(
        120.0, ge=0, le=86_400, description="How long the load must stay below target before scaling down."
    )
    affinity_prefix_chars: int = Field(
        512,
        ge=16,
        le=1_000_000,
        description="Leading characters of the prompt whose hash picks a replica, so that requests sharing "
        "a prompt prefix (a system prompt, a document) reuse that replica's prefix cache.",
    )
    max_imbalance_tokens: int = Field(
        2048,
        ge=0,
        le=100_000_000,
        description="How many more tokens in flight than the least loaded replica the affine replica may "
        "have before a request goes to the least loaded one instead.",
    )

    @model_validator(mode="after")
    def _min_at_most_max(self) -> ReplicasConfig:
        if self.min > self.max:
            raise ValueError(f"replicas.min is {self.min} but replicas.max is {self.max}: raise max")
        return self


class ReplicaResourcesConfig(BaseModel):
    """What Ray reserves for each replica: it places a replica only on a node with this much free."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, ge=0, le=1024, description="CPU cores per replica.")
    num_gpus: float = Field(
        0.0, ge=0, le=64, description="GPUs per replica (1: one engine per GPU; fractions share a GPU)."
    )
    memory_gb: float | None = Field(
        None, gt=0, le=65_536, description="Memory per replica in GB; None reserves none."
    )
