"""Who calls the server: tenants, teams and organisations, their keys, priorities, quotas and budgets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PriorityName = Literal["interactive", "conversational", "batch"]
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
