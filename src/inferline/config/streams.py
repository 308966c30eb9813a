"""Stream workers (`streams:`): a source of messages, the route that scores each, and the sink its result
is written to. Consumption is at least once (a message is acknowledged only after its result is in the
sink); output is idempotent, keyed by the message id, so a redelivered message never gives a second
result."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferline.config.tenants import PriorityName

ScoringTask = Literal["infer", "embed", "generate"]


class RedisSourceConfig(BaseModel):
    """A Redis stream read by a consumer group (XREADGROUP); each entry's `field` holds a JSON object."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["redis"] = "redis"
    url: str = Field("redis://127.0.0.1:6379/0", description="redis://host:port/db of the stream.")
    stream: str = Field(..., min_length=1, description="The stream's key.")
    group: str = Field(
        "inferline", min_length=1, description="Consumer group; created at the stream's start if absent."
    )
    consumer: str | None = Field(
        None, description="This worker's name in the group; default: host name and process id."
    )
    field: str = Field("data", min_length=1, description="The entry field holding the JSON payload.")
    claim_idle_ms: int = Field(
        30_000,
        ge=10,
        description="A message read but not acknowledged for this long (its consumer died, or scoring "
        "it failed) is claimed by another worker with XAUTOCLAIM and tried again. Longer than the "
        "slowest batch, or a live worker's messages are taken from it (harmless: output is "
        "idempotent, but the work is done twice).",
    )
    delete_consumer_idle_ms: int | None = Field(
        3_600_000,
        ge=1000,
        description="A consumer of the group with nothing pending that has not read for this long (its "
        "worker died and its messages were claimed) is deleted (XGROUP DELCONSUMER), so dead workers do "
        "not pile up in the group; null: never. A live worker reads at least once a second, and one "
        "deleted by mistake is added back by its next read.",
    )
    dead_letter: str | None = Field(
        None, description="Stream key of poison messages, with their reason; default: `<stream>.dead`."
    )

    @property
    def dead_letter_stream(self) -> str:
        return self.dead_letter or f"{self.stream}.dead"


class NatsSourceConfig(BaseModel):
    """A NATS JetStream stream read by a durable pull consumer; each message's data is a JSON object."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["nats"] = "nats"
    url: str = Field("nats://127.0.0.1:4222", description="nats://host:port of the server.")
    stream: str = Field(..., min_length=1, description="The JetStream stream; created if absent.")
    subject: str = Field(..., min_length=1, description="The subject the stream holds and the worker reads.")
    durable: str = Field(
        "inferline", min_length=1, description="Durable consumer name, shared by every worker of the stream."
    )
    ack_wait_s: float = Field(
        30.0,
        ge=0.1,
        description="A message not acknowledged this long after delivery (its worker died) is delivered "
        "again, to any worker. Longer than the slowest batch.",
    )
    dead_letter: str | None = Field(
        None,
        description="Subject of poison messages, with their reason; default `<subject>.dead`. A stream "
        "must hold it (the worker creates `<stream>_DEAD` for it when none does).",
    )

    @property
    def dead_letter_subject(self) -> str:
        return self.dead_letter or f"{self.subject}.dead"


class RedisSinkConfig(BaseModel):
    """Results appended to a Redis stream (XADD), each once: a key per message id marks it written."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["redis"] = "redis"
    url: str = Field("redis://127.0.0.1:6379/0", description="redis://host:port/db of the stream.")
    stream: str = Field(..., min_length=1, description="The results stream's key.")
    dedupe_ttl_s: int = Field(
        7 * 86400,
        ge=60,
        description="How long a message id is remembered as written; a redelivery later than this "
        "(after an outage longer than it) would write a second result.",
    )


class NatsSinkConfig(BaseModel):
    """Results published to a JetStream subject with the message id as `Nats-Msg-Id`, so the server drops
    a second copy within its stream's duplicate window."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["nats"] = "nats"
    url: str = Field("nats://127.0.0.1:4222", description="nats://host:port of the server.")
    stream: str = Field(
        ..., min_length=1, description="The JetStream stream holding `subject`; created if absent."
    )
    subject: str = Field(..., min_length=1, description="Where results are published.")
    duplicate_window_s: float = Field(
        600.0,
        ge=1,
        description="The stream's duplicate window when the worker creates it: a redelivery later than "
        "this would publish a second result (JetStream's default is 120 s).",
    )


class DatabaseSinkConfig(BaseModel):
    """Results as rows of the `stream_results` table in inferline's database, keyed by stream and
    message id (a second insert of the same key is ignored)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["database"] = "database"
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default: telemetry.database_url, else inferline.db in $INFERLINE_HOME.",
    )


SourceConfig = Annotated[RedisSourceConfig | NatsSourceConfig, Field(discriminator="kind")]
SinkConfig = Annotated[RedisSinkConfig | NatsSinkConfig | DatabaseSinkConfig, Field(discriminator="kind")]


class StreamConfig(BaseModel):
    """One stream worker: messages from `source`, scored by `model` in batches, results to `sink`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Names the worker.")
    source: SourceConfig
    sink: SinkConfig
    model: str = Field(..., min_length=1, description="The route or deployment that scores each message.")
    task: ScoringTask = Field(
        "infer",
        description="infer: a tensor model (ONNX) given the payload's `inputs` ({input name: one row}); "
        "embed: an embedding model given the payload's `text`; generate: an LLM given `prompt_template` "
        "filled with the payload's fields.",
    )
    prompt_template: str | None = Field(
        None, description="generate: the prompt, with {field} replaced by the payload's fields."
    )
    max_tokens: int = Field(64, ge=1, le=4096, description="generate: the most tokens per answer.")
    priority: PriorityName = Field(
        "batch",
        description="The class the work runs in: interactive (fraud checks) goes ahead of chat traffic; "
        "batch (enrichment) waits behind it.",
    )
    tenant: str = Field("default", description="The tenant the work is metered and limited as.")
    max_batch_size: int = Field(
        64, ge=1, le=4096, description="Most messages scored together (one model call for infer and embed)."
    )
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=10_000,
        description="How long a batch waits for more messages after its first: the latency a message may "
        "pay so that others share its model call.",
    )
    max_deliveries: int = Field(
        3,
        ge=1,
        le=100,
        description="A message whose scoring failed this many deliveries (or that was delivered this many "
        "times without a result: it stops the worker) goes to the dead-letter stream with the reason.",
    )

    @model_validator(mode="after")
    def _template(self) -> StreamConfig:
        if self.task == "generate" and not self.prompt_template:
            raise ValueError(f"stream {self.name!r}: task generate needs a prompt_template")
        return self
