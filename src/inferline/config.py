"""The configuration schema: every field typed, bounded and documented."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SpeculativeConfig(BaseModel):
    """Speculative decoding: cheap guesses of the next tokens, verified by the model in one forward pass."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["ngram", "draft"] = Field(
        ...,
        description="'ngram': copy what followed the last tokens' earlier occurrence in the prompt or "
        "output (free, wins when the output repeats its input); 'draft': a small draft model guesses.",
    )
    num_speculative_tokens: int = Field(4, ge=1, le=16, description="Draft tokens verified per step.")
    prompt_lookup_min: int = Field(
        2, ge=1, le=16, description="ngram: shortest run of last tokens looked up in the sequence."
    )
    prompt_lookup_max: int = Field(
        4, ge=1, le=16, description="ngram: longest run of last tokens looked up (tried first)."
    )
    draft_model: str | None = Field(
        None,
        description="draft: the draft model (same kinds of source as the engine's model), sharing the "
        "target's tokenizer and vocabulary.",
    )
    draft_quantization: Literal["none", "int8", "int4"] = Field(
        "none", description="draft: weight quantization of the draft model, as EngineConfig.quantization."
    )

    @model_validator(mode="after")
    def _method_fields(self) -> SpeculativeConfig:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) is above prompt_lookup_max "
                f"({self.prompt_lookup_max}): lower the first or raise the second"
            )
        if self.method == "draft" and self.draft_model is None:
            raise ValueError("method 'draft' needs draft_model (e.g. 'default'), or use method 'ngram'")
        if self.method == "ngram" and self.draft_model is not None:
            raise ValueError("draft_model is only used by method 'draft': drop it or set method: draft")
        return self


class EngineConfig(BaseModel):
    """How one LLM engine loads its model and shares its memory and compute between requests."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "default", description="Model name in the store, a GGUF file, or a Hugging Face folder."
    )
    device: str = Field(
        "auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype; 'auto' is float32 on CPU and bfloat16 on CUDA."
    )
    quantization: Literal["none", "int8", "int4"] = Field(
        "none",
        description=(
            "Weight quantization of the linear layers: 'int8' (per-channel, about half of bf16's memory "
            "traffic) or 'int4' (groups of 32, about a quarter); activations stay bfloat16. CPU only."
        ),
    )
    single_stream_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=(
            "CPU: intra-op threads for steps that decode a single stream. None: in a server, all of "
            "torch's threads but one, so the event loop keeps a core; offline (inferline.LLM), all. "
            "A step is ~120 weight kernels that each wait for every thread, and one thread descheduled "
            "by the event loop stalls them all: served on 2 cores, int4 decoded one stream in 7.6 ms "
            "a token on 1 thread against 11.3 ms on 2, with no loss at 4 or 16 streams."
        ),
    )
    cpu_decode_step: bool = Field(
        True,
        description=(
            "CPU: run decode steps of up to 16 sequences through inferline's C++ decode step (built once "
            "per machine with its C++ compiler; PyTorch ops are used where it cannot be built). It was "
            "1.3-2.2x faster per token than PyTorch ops on 2 cores; false forces the PyTorch ops."
        ),
    )
    block_size: int = Field(16, ge=1, le=256, description="Tokens per KV-cache block.")
    max_num_seqs: int = Field(32, ge=1, le=4096, description="Most sequences decoding in one step.")
    max_num_batched_tokens: int = Field(
        512,
        ge=16,
        le=1 << 20,
        description="Token budget of one step; longer prompts are prefilled in chunks.",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt plus completion; defaults to the model's context length."
    )
    kv_cache_bytes: int | None = Field(
        None, ge=1 << 16, description="KV-cache pool size in bytes; overrides kv_cache_fraction when set."
    )
    kv_cache_fraction: float = Field(
        0.1,
        gt=0.0,
        le=0.95,
        description="KV-cache pool as a fraction of the device memory free after the weights are loaded.",
    )
    enable_prefix_caching: bool = Field(True, description="Share KV blocks of identical prompt prefixes.")
    tenant_input_token_weight: float = Field(
        1.0, ge=0.0, description="Fair-queue cost of one prompt token served to a tenant."
    )
    tenant_output_token_weight: float = Field(
        2.0, ge=0.0, description="Fair-queue cost of one generated token served to a tenant."
    )
    seed: int = Field(0, description="Seed of the sampler for requests that do not bring their own.")
    speculative: SpeculativeConfig | None = Field(
        None, description="Speculative decoding (n-gram or draft model); None decodes one token per step."
    )


DeploymentKind = Literal["llm", "embedding", "onnx", "remote"]
PriorityName = Literal["interactive", "conversational", "batch"]


class CircuitBreakerConfig(BaseModel):
    """When to stop sending requests to a failing deployment, and when to try it again."""

    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(5, ge=1, le=10_000, description="Failures within window_s that open it.")
    window_s: float = Field(30.0, gt=0, le=86_400, description="How far back failures are counted.")
    cooldown_s: float = Field(
        10.0, gt=0, le=86_400, description="How long it stays open before one probe request is let through."
    )


class DeploymentConfig(BaseModel):
    """One model variant the router can send requests to: a local LLM, embedding or ONNX model, or a
    remote OpenAI-compatible upstream; with the price, quality and latency the router chooses by."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128, description="The deployment's unique name.")
    kind: DeploymentKind = Field(..., description="'llm', 'embedding', 'onnx' or 'remote'.")
    source: str | None = Field(
        None,
        min_length=1,
        description="Local kinds: a store name, a GGUF file, a model folder, an .onnx file, or a signed "
        "registry version 'registry:NAME:VERSION_OR_ALIAS' (verified against registry.trusted_public_keys).",
    )
    aliases: list[str] = Field(default_factory=list, description="Other names that reach this deployment.")
    version: str = Field("1", min_length=1, description="Model version reported in headers and metadata.")
    engine: EngineConfig | None = Field(None, description="LLM engine settings (kind 'llm' only).")
    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Embedding/ONNX: most rows (texts, tensor rows) in one run."
    )
    max_queue_delay_us: int = Field(
        2000,
        ge=0,
        le=10_000_000,
        description="Embedding/ONNX: longest wait for a batch to fill, in microseconds.",
    )
    max_queued_requests: int = Field(
        256, ge=1, le=1_000_000, description="Requests waiting beyond this are refused at once with 429."
    )
    base_url: str | None = Field(
        None, description="Remote: the upstream's OpenAI API root, e.g. 'http://10.0.0.5:8000/v1'."
    )
    api_key_env: str | None = Field(
        None,
        description="Remote: environment variable holding the upstream's API key (keeps it out of files).",
    )
    upstream_model: str | None = Field(
        None, description="Remote: the model name to ask the upstream for; defaults to `name`."
    )
    max_output_tokens: int = Field(
        4096,
        ge=1,
        description="Remote: the most tokens a request without max_tokens may produce (for budget holds).",
    )
    timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest wait for the first token (or whole answer of a non-LLM) before falling back.",
    )
    price_input_per_1m: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    price_output_per_1m: float = Field(0.0, ge=0, description="USD per million generated tokens.")
    quality: float = Field(0.0, ge=0, description="Relative answer quality; higher is better (best_quality).")
    max_concurrency: int | None = Field(
        None, ge=1, le=1_000_000, description="Most requests in flight; more wait in the router's queue."
    )
    latency_objective_ms: float | None = Field(
        None,
        gt=0,
        description="Target time to first token (whole answer for non-LLMs); `cheapest` skips a deployment "
        "whose live estimate is above it.",
    )
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)

    @model_validator(mode="after")
    def _kind_fields(self) -> DeploymentConfig:
        if self.kind == "remote":
            if not self.base_url:
                raise ValueError("a remote deployment needs base_url (the upstream's /v1 root)")
        elif not self.source:
            raise ValueError(f"a {self.kind} deployment needs source (where its weights are)")
        return self

    @property
    def local_source(self) -> str:
        """`source` of a local kind (validation guarantees it is set)."""
        if self.source is None:
            raise ValueError(f"deployment {self.name!r} ({self.kind}) has no source")
        return self.source

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_input_per_1m + completion_tokens * self.price_output_per_1m) / 1e6


class CascadeConfig(BaseModel):
    """When a cascade stage's answer is good enough to return rather than escalate."""

    model_config = ConfigDict(extra="forbid")

    min_mean_logprob: float | None = Field(
        -1.0, le=0, description="Escalate when the answer's mean token log-probability is below this."
    )
    escalate_on_empty: bool = Field(True, description="Escalate when the answer is empty or only whitespace.")
    escalate_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions (case-insensitive); escalate when the answer matches one, "
        'e.g. refusals such as "^I (can\'t|cannot)".',
    )

    @field_validator("escalate_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {error}") from None
        return patterns


class RolloutPlanConfig(BaseModel):
    """A staged rollout: the canary's share climbs step by step while the candidate holds up."""

    model_config = ConfigDict(extra="forbid")

    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 100.0],
        min_length=1,
        max_length=20,
        description="Candidate shares in percent, increasing, the last 100 (e.g. [5, 25, 100]).",
    )
    dwell_s: float = Field(300.0, ge=0, le=30 * 86400, description="Least time spent at each step, in s.")
    min_samples: int = Field(
        100, ge=1, le=1_000_000, description="Requests each arm must serve at a step before it advances."
    )
    min_score_ratio: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Registry versions only: refuse the candidate when an evaluation score it shares with "
        "the baseline is below the baseline's × this (e.g. 0.98).",
    )

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or any(a >= b for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps {steps} must be percents in (0, 100] that increase, e.g. [5, 25, 100]")
        if steps[-1] != 100:
            raise ValueError(f"steps {steps} must end at 100 so the rollout completes: append 100")
        return steps


class CanaryConfig(BaseModel):
    """A share of traffic to a new version, rolled back automatically when it does worse."""

    model_config = ConfigDict(extra="forbid")

    baseline: str = Field(..., description="The deployment serving most traffic.")
    candidate: str = Field(..., description="The new deployment under test.")
    percent: float = Field(5.0, ge=0, le=100, description="Share of requests sent to the candidate.")
    min_samples: int = Field(
        20, ge=1, le=1_000_000, description="Requests each arm must have served before a verdict."
    )
    window: int = Field(200, ge=1, le=1_000_000, description="Recent requests per arm that are judged.")
    max_error_rate_increase: float = Field(
        0.05, ge=0, le=1, description="Roll back when candidate error rate > baseline's + this."
    )
    max_p95_latency_ratio: float = Field(
        1.5, ge=1, description="Roll back when candidate p95 latency > baseline's × this."
    )
    rollout: RolloutPlanConfig | None = Field(
        None, description="Advance `percent` through these steps on live metrics (overrides `percent`)."
    )


class SloConfig(BaseModel):
    """A route's service-level objectives, judged over a rolling window of its requests."""

    model_config = ConfigDict(extra="forbid")

    availability: float | None = Field(
        None, gt=0, lt=1, description="Share of requests that must not fail, e.g. 0.999."
    )
    ttft_p95_ms: float | None = Field(None, gt=0, description="95th-percentile time to first token, in ms.")
    latency_p95_ms: float | None = Field(None, gt=0, description="95th-percentile end-to-end latency, in ms.")
    window_days: float = Field(30.0, gt=0, le=365, description="The window the error budget spans.")


RoutePolicy = Literal["fixed", "weighted", "cheapest", "fastest", "best_quality", "cascade", "canary"]


class RouteConfig(BaseModel):
    """A public model name and the policy that picks which deployment answers it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128, description="The name clients send as `model`.")
    policy: RoutePolicy = Field("fixed", description="How a deployment is chosen (see the README).")
    deployments: list[str] = Field(
        default_factory=list,
        description="Candidates: one for fixed; stages in order for cascade; the set for weighted, "
        "cheapest, fastest and best_quality. Canary takes its two from `canary`.",
    )
    weights: dict[str, float] = Field(
        default_factory=dict, description="weighted: deployment -> relative share (missing ones get 0)."
    )
    sticky_by: Literal["user", "tenant", "none"] = Field(
        "user",
        description="weighted/canary: keep a caller on one arm, by the body's `user` field (falling back "
        "to the tenant), by tenant, or not at all.",
    )
    max_price_per_1m: float | None = Field(
        None, ge=0, description="best_quality: ignore deployments whose output price per 1M is above this."
    )
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    canary: CanaryConfig | None = None
    fallbacks: list[str] = Field(
        default_factory=list, description="Tried in order when the chosen deployment fails or times out."
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Most deployments one request is tried on.")
    degrade_to: str | None = Field(
        None, description="A smaller, faster deployment used when the chosen one's wait is over budget."
    )
    slo: SloConfig | None = Field(None, description="Objectives this route is held to (GET /v1/slo).")

    def members(self) -> list[str]:
        """Every deployment this route may send a request to."""
        names = [*self.deployments, *self.weights, *self.fallbacks]
        if self.canary is not None:
            names += [self.canary.baseline, self.canary.candidate]
        if self.degrade_to is not None:
            names.append(self.degrade_to)
        return list(dict.fromkeys(names))


Period = Literal["minute", "hour", "day", "month", "total"]


class BudgetConfig(BaseModel):
    """A spending limit per calendar period (UTC), from the deployments' prices."""

    model_config = ConfigDict(extra="forbid")

    limit_usd: float = Field(..., ge=0, description="Most spend per period, in USD.")
    period: Period = Field(
        "month", description="'minute', 'hour', 'day', 'month' (calendar, UTC) or 'total'."
    )


class QuotaConfig(BaseModel):
    """Rate limits of one tenant (token buckets that refill continuously)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, ge=1, description="Requests per minute.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Prompt plus completion tokens per minute.")
    max_concurrent: int | None = Field(None, ge=1, description="Requests in flight at once.")


class ApiKeyConfig(BaseModel):
    """A named key, so that it can have a budget of its own."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(..., min_length=1, description="The key, or 'sha256:<hex digest>' of it.")
    name: str = Field(..., min_length=1, max_length=128, description="Shown in errors and usage records.")
    budget: BudgetConfig | None = None


class TenantConfig(BaseModel):
    """A tenant, the API keys that authenticate as it, its priority, quotas and budget."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128)
    api_keys: list[str | ApiKeyConfig] = Field(
        ...,
        min_length=1,
        description="Bearer keys, in plain text or as 'sha256:<hex digest>', or named keys with budgets.",
    )
    priority: PriorityName = Field(
        "conversational",
        description="Scheduling class of this tenant's requests unless a request asks lower.",
    )
    team: str | None = Field(None, description="The team (in `teams`) this tenant belongs to.")
    quotas: QuotaConfig = Field(default_factory=QuotaConfig)
    budget: BudgetConfig | None = None


class TeamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128)
    organisation: str | None = Field(None, description="The organisation (in `organisations`) it belongs to.")
    budget: BudgetConfig | None = None


class OrganisationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128)
    budget: BudgetConfig | None = None


class AdmissionConfig(BaseModel):
    """The longest estimated queue wait each priority class accepts before degrading or a 429."""

    model_config = ConfigDict(extra="forbid")

    interactive_max_wait_s: float = Field(0.5, gt=0, description="Interactive requests' wait budget.")
    conversational_max_wait_s: float = Field(5.0, gt=0, description="Conversational requests' wait budget.")
    batch_max_wait_s: float = Field(600.0, gt=0, description="Batch requests' wait budget.")

    def max_wait_s(self, priority: PriorityName) -> float:
        return float(getattr(self, f"{priority}_max_wait_s"))


class TracingConfig(BaseModel):
    """OpenTelemetry tracing: spans for each request, exported over OTLP when an endpoint is set."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Record spans (W3C traceparent from clients is always honoured).")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces; none exports nothing.",
    )
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of new traces recorded.")
    service_name: str = Field("inferline", min_length=1, description="The service.name resource attribute.")


class TelemetryConfig(BaseModel):
    """Metering, tracing and logs."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the usage database (sqlite:///..., postgresql+psycopg://...); "
        "default: a SQLite file inferline.db in $INFERLINE_HOME (~/.cache/inferline).",
    )
    metering: bool = Field(True, description="Write one usage record per request to the database.")
    metrics: bool = Field(
        True, description="Count requests, tokens and cost per tenant and route for /metrics."
    )
    flush_interval_s: float = Field(
        1.0, gt=0, le=60, description="Longest a usage record waits to be written."
    )
    buffer_max_records: int = Field(
        100_000, ge=100, description="Records kept in memory while the database cannot be written."
    )
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    log_format: Literal["json", "text"] = Field("json", description="Server log lines: JSON objects or text.")
    access_log: bool = Field(
        True,
        description="One log line per finished HTTP request: method, path, status, latency, request id, "
        "tenant, route, deployment, tokens.",
    )
    capture_text: bool = Field(
        False, description="Log prompt and completion text with each request (off: never logged)."
    )
    record_mean_logprob: bool = Field(
        False,
        description="Compute every answer's token log-probabilities, asked for or not, and record their mean "
        "in its usage record (mean_logprob), as edge devices do to flag low-confidence answers; responses "
        "are unchanged. Costs a log-softmax per sampled token.",
    )


class RegistryServingConfig(BaseModel):
    """Which signed registry bundles the server trusts, for deployments with `source: registry:NAME:REF`."""

    model_config = ConfigDict(extra="forbid")

    trusted_public_keys: list[Path] = Field(
        default_factory=list,
        description="EC P-256 public keys (.pub.pem); a bundle loads only if one of them verifies it.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the registry's catalog; default: telemetry.database_url, else the "
        "SQLite file inferline.db in $INFERLINE_HOME.",
    )


def default_deployments() -> list[DeploymentConfig]:
    return [
        DeploymentConfig(name="smollm2-135m-instruct", kind="llm", source="default", aliases=["default"]),
        DeploymentConfig(name="all-minilm-l6-v2", kind="embedding", source="all-minilm-l6-v2"),
    ]


Location = tuple[str | int, ...]


class ConfigReferenceError(ValueError):
    """A name in the config that refers to nothing; `loc` is the field's path (for file:line messages)."""

    def __init__(self, loc: Location, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class ServerConfig(BaseModel):
    """`inferline serve --config FILE`: the YAML file is exactly this schema."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    api_keys: list[str] = Field(default_factory=list, description="Keys of the single 'default' tenant.")
    admin_api_keys: list[str] = Field(
        default_factory=list, description="Keys (or 'sha256:<hex>') allowed to use /admin; none disables it."
    )
    tenants: list[TenantConfig] = Field(default_factory=list)
    teams: list[TeamConfig] = Field(default_factory=list)
    organisations: list[OrganisationConfig] = Field(default_factory=list)
    deployments: list[DeploymentConfig] = Field(default_factory=default_deployments)
    routes: list[RouteConfig] = Field(
        default_factory=list,
        description="Public names with policies; every deployment name and alias is also a fixed route.",
    )
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    redis_url: str | None = Field(
        None, description="redis://host:port/db: quotas and budgets shared by every replica using it."
    )
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    registry: RegistryServingConfig = Field(default_factory=RegistryServingConfig)
    max_body_bytes: int = Field(4 << 20, ge=1024, description="Larger request bodies get 413.")
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM, how long in-flight work may finish."
    )

    def check_references(self) -> None:
        """Raise ConfigReferenceError at the first name that points nowhere or is used twice."""
        names: dict[str, Location] = {}
        for i, deployment in enumerate(self.deployments):
            for j, name in enumerate([deployment.name, *deployment.aliases]):
                loc: Location = ("deployments", i, "name") if j == 0 else ("deployments", i, "aliases", j - 1)
                _unique(names, name, loc)
        deployments = {d.name for d in self.deployments}
        for i, route in enumerate(self.routes):
            _unique(names, route.name, ("routes", i, "name"))
            _check_route(route, ("routes", i), deployments)
        teams = {t.name for t in self.teams}
        organisations = {o.name for o in self.organisations}
        _check_unique_people(self)
        for i, tenant in enumerate(self.tenants):
            if tenant.team is not None and tenant.team not in teams:
                raise ConfigReferenceError(
                    ("tenants", i, "team"), f"team {tenant.team!r} is not defined in `teams`"
                )
        for i, team in enumerate(self.teams):
            if team.organisation is not None and team.organisation not in organisations:
                raise ConfigReferenceError(
                    ("teams", i, "organisation"),
                    f"organisation {team.organisation!r} is not defined in `organisations`",
                )


def _check_unique_people(config: ServerConfig) -> None:
    """Budgets and quotas are kept by name: two tenants, teams, organisations or keys of one name would
    share them by accident."""
    for field_name, entries in (
        ("tenants", config.tenants),
        ("teams", config.teams),
        ("organisations", config.organisations),
    ):
        seen: dict[str, Location] = {}
        for i, entry in enumerate(entries):
            _unique(seen, entry.name, (field_name, i, "name"))
    key_names: dict[str, Location] = {}
    for i, tenant in enumerate(config.tenants):
        for j, key in enumerate(tenant.api_keys):
            if isinstance(key, ApiKeyConfig):
                _unique(key_names, key.name, ("tenants", i, "api_keys", j, "name"))


def _unique(seen: dict[str, Location], name: str, loc: Location) -> None:
    if name in seen:
        where = ".".join(str(p) for p in seen[name])
        raise ConfigReferenceError(loc, f"name {name!r} is already used at {where}; names must be unique")
    seen[name] = loc


def _check_route(route: RouteConfig, loc: Location, deployments: set[str]) -> None:
    fields: list[tuple[Location, str]] = [
        ((*loc, "deployments", i), n) for i, n in enumerate(route.deployments)
    ]
    fields += [((*loc, "weights", n), n) for n in route.weights]
    fields += [((*loc, "fallbacks", i), n) for i, n in enumerate(route.fallbacks)]
    if route.degrade_to is not None:
        fields.append(((*loc, "degrade_to"), route.degrade_to))
    if route.canary is not None:
        fields += [((*loc, "canary", "baseline"), route.canary.baseline)]
        fields += [((*loc, "canary", "candidate"), route.canary.candidate)]
    for field_loc, name in fields:
        if name not in deployments:
            known = ", ".join(sorted(deployments))
            raise ConfigReferenceError(field_loc, f"deployment {name!r} is not defined; defined: {known}")
    needs = {
        "canary": (route.canary is not None, "a canary route needs `canary: {baseline, candidate, percent}`"),
        "weighted": (bool(route.weights), "a weighted route needs `weights: {deployment: share}`"),
        "fixed": (len(route.deployments) == 1, "a fixed route needs exactly one deployment"),
        "cascade": (
            len(route.deployments) >= 2,
            "a cascade route needs two or more deployments, cheapest first",
        ),
    }
    ok, message = needs.get(
        route.policy, (bool(route.deployments), f"a {route.policy} route needs deployments")
    )
    if not ok:
        raise ConfigReferenceError((*loc, "policy"), message)
    if route.policy == "weighted" and sum(route.weights.values()) <= 0:
        raise ConfigReferenceError((*loc, "weights"), "weights must add up to more than 0")
