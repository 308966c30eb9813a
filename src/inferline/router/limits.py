"""Per-tenant quotas and spend budgets, checked before a request runs and settled after it.

Quotas (TenantConfig.quotas) are token buckets for requests and tokens per minute, refilling
continuously, and a cap on requests in flight. `acquire` takes a request token and a concurrency slot
only if every quota allows it. Tokens are only known afterwards, so `finish` debits them and the bucket
may go into debt; until it refills, the tenant's next requests wait.

Budgets sit on the one hierarchy key ⊂ tenant ⊂ team ⊂ organisation, each per calendar period (UTC).
Before a request runs, `hold_budget` reserves its worst-case cost on every level at once, and only if
spent + held + amount stays within every limit; so concurrent requests can never spend past a budget.
`finish` turns the hold into the actual cost, charged to the periods the hold was taken in.

Money is integer micro-dollars inside, so a request exactly reaching a limit passes and no float
rounding lets one through a hair over.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from inferline.config import BudgetConfig, Period, ServerConfig
from inferline.errors import LimitExceededError
from inferline.router.limit_store import (
    BudgetLine,
    BudgetRefusal,
    LimitStore,
    MemoryLimitStore,
    QuotaRefusal,
    QuotaSpec,
    RedisLimitStore,
    SettleLine,
)

NO_RESET_RETRY_S = 86_400.0
"""retry_after_s of a "total" budget, which never resets."""
PERIOD_GRACE_S = 3600.0
"""How long a period's budget record outlives the period, so late finishes still find their holds."""
_PERIOD_S = {"minute": 60, "hour": 3600, "day": 86_400}
_PERIOD_ADJECTIVE = {"minute": "per-minute", "hour": "hourly", "day": "daily", "month": "monthly"}


_PROCESS_ID = secrets.token_hex(8)
"""Admission ids: this process's random prefix and a counter, unique across replicas sharing Redis."""
_NEXT_ID = itertools.count(1)


@dataclass(frozen=True)
class Principal:
    """Who a request is charged to, along the budget hierarchy."""

    tenant: str
    key: str | None = None  # ApiKeyConfig.name when the request used a named key
    team: str | None = None
    organisation: str | None = None

    @classmethod
    def from_config(cls, config: ServerConfig, tenant: str, key: str | None = None) -> Principal:
        """The tenant's team and organisation as the config places them."""
        tenants = {t.name: t for t in config.tenants}
        teams = {t.name: t for t in config.teams}
        team = tenants[tenant].team if tenant in tenants else None
        organisation = teams[team].organisation if team in teams else None
        return cls(tenant, key, team, organisation)


@dataclass(frozen=True)
class Admission:
    """A request let in by `acquire`; hand it back to hold_budget, release_budget and finish."""

    id: str  # unique; names the request's concurrency slot and budget hold in the store
    principal: Principal


@dataclass
class _Open:
    """An admission not finished yet. The lock keeps its hold, release and finish in order."""

    hold: list[BudgetLine] | None = None
    """The budget records (scope and period) the admission holds on, while it holds."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def period_bounds(period: Period, now: float) -> tuple[float, float | None]:
    """Start and end (epoch seconds) of the calendar period (UTC) holding `now`; a total has no end."""
    if period == "total":
        return 0.0, None
    if period == "month":
        day = datetime.fromtimestamp(now, UTC)
        start = datetime(day.year, day.month, 1, tzinfo=UTC)
        end = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)
        return start.timestamp(), end.timestamp()
    length = _PERIOD_S[period]
    start_s = now // length * length
    return start_s, start_s + length


def _micros(usd: float, name: str) -> int:
    if not usd >= 0:
        raise ValueError(f"{name} must be a non-negative number of USD; got {usd!r}")
    return round(usd * 1_000_000)


def _usd(micros: float) -> str:
    """$9.99, $10.00, and sub-cent amounts to the micro-dollar: $0.000123."""
    whole, _, cents = f"{micros / 1e6:.6f}".rstrip("0").partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def _seconds(s: float) -> str:
    return f"{s:.1f}" if s >= 0.1 else f"{s:.3f}"


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def _scope_words(scope: str) -> str:
    kind, _, name = scope.partition(":")
    return f"{kind} {name!r}"


def _quota_error(spec: QuotaSpec, refusal: QuotaRefusal) -> LimitExceededError:
    who, retry = _scope_words(spec.scope), _seconds(refusal.retry_after_s)
    if refusal.limit == "max_concurrent":
        message = (
            f"{who} already has {int(refusal.level)} requests in flight, its max_concurrent limit of "
            f"{spec.max_concurrent}; retry in {retry} s, or when one of them finishes"
        )
    else:
        value = getattr(spec, refusal.limit)
        debt = f" ({-refusal.level:.0f} tokens in debt)" if refusal.level < 0 else ""
        message = f"{who} is over its {refusal.limit} limit of {value}{debt}; retry in {retry} s"
    return LimitExceededError(message, spec.scope, refusal.limit, refusal.retry_after_s)


def _budget_error(
    scope: str, budget: BudgetConfig, refusal: BudgetRefusal, amount_micros: int, now: float
) -> LimitExceededError:
    _, end = period_bounds(budget.period, now)
    line = _PERIOD_ADJECTIVE.get(budget.period, "total")
    message = (
        f"{_scope_words(scope)} has spent {_usd(refusal.spent_micros)} of its "
        f"{_usd(_micros(budget.limit_usd, 'limit_usd'))} {line} budget"
    )
    if refusal.held_micros:
        message += f" ({_usd(refusal.held_micros)} more is held by requests in flight)"
    message += f"; this request needs up to {_usd(amount_micros)}"
    if end is None:
        message += "; the budget never resets: raise its limit_usd to continue"
        return LimitExceededError(message, scope, "budget", NO_RESET_RETRY_S)
    message += f"; it resets at {_iso(end)}, retry in {_seconds(end - now)} s"
    return LimitExceededError(message, scope, "budget", end - now)


def _budget_line(scope: str, budget: BudgetConfig, now: float) -> BudgetLine:
    start, end = period_bounds(budget.period, now)
    ttl_s = None if end is None else end + PERIOD_GRACE_S - now
    key = f"budget:{scope}:{budget.period}:{int(start)}"
    return BudgetLine(key, _micros(budget.limit_usd, "limit_usd"), ttl_s)


class Limiter:
    """Quotas and budgets of every principal the config names, kept in one store."""

    def __init__(
        self, config: ServerConfig, store: LimitStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.clock = clock
        """Wall-clock epoch seconds: calendar periods, and with Redis, the time replicas agree on."""
        self.quotas: dict[str, QuotaSpec] = {}  # tenant -> its quotas
        self.budgets: dict[str, BudgetConfig] = {}  # "key:ci", "tenant:alpha", "team:ml", "organisation:x"
        self.key_scopes: dict[tuple[str, str], str] = {}  # (tenant, key name) -> "key:<name>"
        for tenant in config.tenants:
            q = tenant.quotas
            if q.requests_per_minute or q.tokens_per_minute or q.max_concurrent:
                self.quotas[tenant.name] = QuotaSpec(
                    f"tenant:{tenant.name}", q.requests_per_minute, q.tokens_per_minute, q.max_concurrent
                )
            self._add_budget(f"tenant:{tenant.name}", tenant.budget)
            for key in tenant.api_keys:
                if not isinstance(key, str) and key.budget is not None:
                    self._add_budget(f"key:{key.name}", key.budget)
                    self.key_scopes[tenant.name, key.name] = f"key:{key.name}"
        for team in config.teams:
            self._add_budget(f"team:{team.name}", team.budget)
        for organisation in config.organisations:
            self._add_budget(f"organisation:{organisation.name}", organisation.budget)
        self._open: dict[str, _Open] = {}

    def _add_budget(self, scope: str, budget: BudgetConfig | None) -> None:
        if budget is None:
            return
        if scope in self.budgets:
            raise ValueError(
                f"two budgets belong to {_scope_words(scope)}: budgets are kept by name, so give each "
                "API key with a budget (and each tenant, team and organisation) a name of its own"
            )
        self.budgets[scope] = budget

    @classmethod
    def from_config(cls, config: ServerConfig, clock: Callable[[], float] = time.time) -> Limiter:
        """Shared through Redis when config.redis_url is set, else kept in this process."""
        store: LimitStore = (
            RedisLimitStore.from_url(config.redis_url) if config.redis_url else MemoryLimitStore()
        )
        return cls(config, store, clock)

    def _budget_scopes(self, principal: Principal) -> list[tuple[str, BudgetConfig]]:
        """The principal's budgets, narrowest first: key, tenant, team, organisation."""
        scopes = [f"tenant:{principal.tenant}"]
        if principal.key is not None and (principal.tenant, principal.key) in self.key_scopes:
            scopes.insert(0, self.key_scopes[principal.tenant, principal.key])
        scopes += [f"team:{principal.team}"] if principal.team is not None else []
        scopes += [f"organisation:{principal.organisation}"] if principal.organisation is not None else []
        return [(scope, self.budgets[scope]) for scope in scopes if scope in self.budgets]

    def _state(self, admission: Admission) -> _Open:
        state = self._open.get(admission.id)
        if state is None:
            raise ValueError(f"admission {admission.id} is finished (or is not this limiter's)")
        return state

    async def acquire(self, principal: Principal) -> Admission:
        """Let a request in if its tenant's quotas allow, else raise LimitExceededError."""
        admission = Admission(f"{_PROCESS_ID}{next(_NEXT_ID):x}", principal)
        spec = self.quotas.get(principal.tenant)
        if spec is not None:
            refusal = await self.store.take_quotas(spec, admission.id, self.clock())
            if refusal is not None:
                raise _quota_error(spec, refusal)
        self._open[admission.id] = _Open()
        return admission

    async def hold_budget(self, admission: Admission, amount_usd: float) -> None:
        """Reserve up to `amount_usd` on every budget of the principal, or raise LimitExceededError."""
        amount = _micros(amount_usd, "amount_usd")
        state = self._state(admission)
        async with state.lock:
            if admission.id not in self._open:
                raise ValueError(f"admission {admission.id} finished while its budget hold waited")
            if state.hold is not None:
                raise ValueError(f"admission {admission.id} already holds budget: release_budget first")
            now = self.clock()
            scopes = self._budget_scopes(admission.principal)
            lines = [_budget_line(scope, budget, now) for scope, budget in scopes]
            if lines:
                refusal = await self.store.hold(lines, admission.id, amount, now)
                if refusal is not None:
                    scope, budget = scopes[refusal.index]
                    raise _budget_error(scope, budget, refusal, amount, now)
            state.hold = lines

    async def release_budget(self, admission: Admission) -> None:
        """Drop the admission's budget hold, if it has one."""
        state = self._state(admission)
        async with state.lock:
            hold, state.hold = state.hold, None
            if hold:
                lines = [SettleLine(line.key, 0, line.ttl_s) for line in hold]
                await self.store.settle(lines, admission.id, self.clock())

    async def finish(self, admission: Admission, tokens: int, cost_usd: float) -> None:
        """Free the concurrency slot, debit `tokens`, and charge `cost_usd` in place of the hold.
        Call it once the request ends, failed ones too (tokens=0, cost_usd=0); later calls do nothing."""
        if tokens < 0:
            raise ValueError(f"tokens must be 0 or more; got {tokens}")
        cost = _micros(cost_usd, "cost_usd")
        state = self._open.pop(admission.id, None)
        if state is None:
            return
        async with state.lock:
            now = self.clock()
            spec = self.quotas.get(admission.principal.tenant)
            if spec is not None:
                await self.store.end_quotas(spec, admission.id, tokens, now)
            release = admission.id if state.hold is not None else None
            if state.hold is not None:
                lines = [SettleLine(line.key, cost, line.ttl_s) for line in state.hold]
            elif cost:
                scopes = self._budget_scopes(admission.principal)
                current = [_budget_line(scope, budget, now) for scope, budget in scopes]
                lines = [SettleLine(line.key, cost, line.ttl_s) for line in current]
            else:
                lines = []
            if lines:
                await self.store.settle(lines, release, now)

    async def snapshot(self) -> dict[str, Any]:
        """Per scope, its quotas' current levels and its budget's state, for the admin API."""
        now = self.clock()
        result: dict[str, Any] = {}
        for spec in self.quotas.values():
            levels = await self.store.read_quotas(spec, now)
            quotas: dict[str, Any] = {}
            if spec.requests_per_minute is not None:
                quotas["requests_per_minute"] = {
                    "limit": spec.requests_per_minute,
                    "available": levels.requests_available,
                }
            if spec.tokens_per_minute is not None:
                quotas["tokens_per_minute"] = {
                    "limit": spec.tokens_per_minute,
                    "available": levels.tokens_available,
                }
            if spec.max_concurrent is not None:
                quotas["max_concurrent"] = {"limit": spec.max_concurrent, "in_flight": levels.num_in_flight}
            result[spec.scope] = {"quotas": quotas}
        lines = [_budget_line(scope, budget, now) for scope, budget in self.budgets.items()]
        states = await self.store.read_budgets([line.key for line in lines], now)
        for (scope, budget), (spent, held) in zip(self.budgets.items(), states, strict=True):
            _, end = period_bounds(budget.period, now)
            result.setdefault(scope, {})["budget"] = {
                "limit_usd": budget.limit_usd,
                "period": budget.period,
                "spent_usd": spent / 1e6,
                "held_usd": held / 1e6,
                "resets_at": None if end is None else _iso(end),
            }
        return result

    async def close(self) -> None:
        await self.store.close()
