"""Staged rollouts: a canary's share climbs step by step on live metrics, and survives restarts.

Design note: the router's Canary is the mechanism (it splits traffic and rolls back on its own verdict on
error rate and p95 latency); this controller only moves its percent through the plan's steps once a step
has lasted `dwell_s` and both arms served `min_samples` there, notices the Canary's rollback, and keeps each
route's plan in the `rollouts` table, so that a restarted server resumes at its step rather than at the
first one. It sees a route through small protocols, not the router's classes: registry/ sits below router/.
Evaluation scores are checked once, when a plan starts: they belong to the versions, not to live traffic.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from sqlalchemy import Column, Double, Integer, MetaData, String, Table, Text, delete, insert
from sqlalchemy import select as sql_select
from sqlalchemy.exc import SQLAlchemyError

from inferline.config import CanaryConfig, RolloutPlanConfig
from inferline.db import create_schema, describe_error, display_url, open_engine
from inferline.errors import InferlineError
from inferline.registry.catalog import RegistryError, VersionRecord, open_catalog
from inferline.registry.serving import RegistrySource, parse_registry_source

logger = logging.getLogger(__name__)

RolloutStatus = Literal["running", "paused", "completed", "rolled_back", "rejected", "aborted"]
RolloutAction = Literal["pause", "resume", "abort"]
_FINAL: tuple[RolloutStatus, ...] = ("completed", "rolled_back", "rejected", "aborted")

metadata = MetaData()

rollouts = Table(
    "rollouts",
    metadata,
    Column("route", String(128), primary_key=True),
    Column("baseline", String(128), nullable=False),
    Column("candidate", String(128), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("percent", Double, nullable=False),
    Column("step_started_at", Double, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("updated_at", Double, nullable=False),
)


class RolloutError(InferlineError):
    """A rollout cannot be stored or changed: database unreachable, unknown route, or a finished plan."""


class Decision(Protocol):
    @property
    def action(self) -> str: ...

    @property
    def reason(self) -> str: ...


class CanaryLever(Protocol):
    """What the controller needs of the router's Canary."""

    @property
    def status(self) -> str: ...

    @property
    def decisions(self) -> Sequence[Decision]: ...

    def set_percent(self, percent: float, by: str = ...) -> None: ...


class ArmCounter(Protocol):
    @property
    def num_requests(self) -> int: ...


@dataclass
class RolloutTarget:
    """One route with a planned canary, as the server hands it over."""

    route: str
    config: CanaryConfig
    canary: CanaryLever
    baseline: ArmCounter
    candidate: ArmCounter
    baseline_source: str | None
    """The deployments' configured `source` (a registry reference enables scores and promotion)."""
    candidate_source: str | None

    @property
    def pair(self) -> tuple[str, str]:
        """Baseline and candidate as stored: a plan is for these deployments serving these sources, so a
        new candidate version (`registry:bot:3` after `:2`) starts a new plan."""
        return _label(self.config.baseline, self.baseline_source), _label(
            self.config.candidate, self.candidate_source
        )


@dataclass
class RolloutState:
    """One row of the `rollouts` table."""

    route: str
    baseline: str
    candidate: str
    step_index: int
    percent: float
    step_started_at: float
    """Unix seconds: when the current step began (or the plan was resumed)."""
    status: RolloutStatus
    reason: str
    updated_at: float


class RolloutStore:
    """The `rollouts` table in the usage database; created on first use. A failed write is tried again
    (`max_attempts` in all, backing off from `retry_delay_s`): a transition the router has already made must
    not be missing from the table that a restarted server resumes from."""

    def __init__(self, url: str, max_attempts: int = 3, retry_delay_s: float = 0.05) -> None:
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self._engine = open_engine(url, "telemetry.database_url")
        self.url = display_url(self._engine.url)
        """The database's URL with any password hidden."""
        self._ready = False
        self._lock = threading.Lock()

    def load(self, route: str) -> RolloutState | None:
        self._ensure_schema()
        try:
            with self._engine.connect() as connection:
                row = (
                    connection.execute(sql_select(rollouts).where(rollouts.c.route == route))
                    .mappings()
                    .first()
                )
        except SQLAlchemyError as error:
            raise self._error("read", error) from None
        return None if row is None else RolloutState(**row)

    def save(self, state: RolloutState) -> None:
        """Replace the route's row (delete then insert: the same on SQLite and PostgreSQL). Blocks for at
        most the retries' back-off (0.15 s by default), and only while the database fails."""
        self._ensure_schema()
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self._engine.begin() as connection:
                    connection.execute(delete(rollouts).where(rollouts.c.route == state.route))
                    connection.execute(insert(rollouts).values(**asdict(state)))
                return
            except SQLAlchemyError as error:
                if attempt == self.max_attempts:
                    raise self._error("write", error) from None
                logger.warning(
                    "rollout on route %s: storing its state (%s) failed: %s; trying again (%d of %d)",
                    state.route,
                    state.status,
                    describe_error(error, self._engine.url),
                    attempt + 1,
                    self.max_attempts,
                )
                time.sleep(self.retry_delay_s * 2 ** (attempt - 1))

    def close(self) -> None:
        self._engine.dispose()

    def _ensure_schema(self) -> None:
        with self._lock:
            if self._ready:
                return
            try:
                create_schema(self._engine, metadata)
            except (SQLAlchemyError, OSError) as error:
                raise self._error("create", error) from None
            self._ready = True

    def _error(self, verb: str, error: SQLAlchemyError | OSError) -> RolloutError:
        return RolloutError(
            f"cannot {verb} the rollouts table in {self.url} ({describe_error(error, self._engine.url)}): "
            "check telemetry.database_url"
        )


@dataclass
class _Plan:
    target: RolloutTarget
    steps: RolloutPlanConfig
    state: RolloutState
    marks: tuple[int, int]
    """Both arms' request counts when the step began: a step's samples are counted from here."""


class RolloutController:
    """Every planned canary of a server: `start()` once, then `tick()` every `interval_s` (`run_forever`)."""

    def __init__(
        self,
        targets: list[RolloutTarget],
        store: RolloutStore,
        catalog_url: str | None,
        clock: Callable[[], float] = time.time,
        interval_s: float = 1.0,
    ) -> None:
        self.targets = targets
        self.store = store
        self.catalog_url = catalog_url
        self.clock = clock
        self.interval_s = interval_s
        self.plans: dict[str, _Plan] = {}
        self._unsaved: set[str] = set()
        """Routes whose latest transition the database refused even after the store's retries."""

    def start(self) -> None:
        """Resume each route's stored plan, or begin a new one when none is stored for this candidate."""
        for target in self.targets:
            plan_config = target.config.rollout
            if plan_config is None:
                continue
            stored = self.store.load(target.route)
            if stored is not None and (stored.baseline, stored.candidate) == target.pair:
                plan = _Plan(target, plan_config, stored, self._counts(target))
                target.canary.set_percent(stored.percent, by="the rollout plan")
                logger.info(
                    "rollout on route %s resumed: %s at %g%%", target.route, stored.status, stored.percent
                )
            else:
                plan = self._begin(target, plan_config)
            self.plans[target.route] = plan

    def tick(self) -> None:
        """Record a Canary's rollback, and advance each plan whose step has lasted and has its samples.
        Writes only on a change: a handful of small rows per rollout."""
        for route in sorted(self._unsaved):
            self._store(self.plans[route])
        now = self.clock()
        for plan in self.plans.values():
            state = plan.state
            if state.status in _FINAL:
                continue
            if plan.target.canary.status == "rolled_back":
                self._finish(plan, "rolled_back", 0.0, _rollback_reason(plan.target.canary))
            elif state.status == "running" and self._step_done(plan, now):
                self._advance(plan, now)

    async def run_forever(self) -> None:
        while True:
            try:
                self.tick()
            except RolloutError as error:  # a database hiccup: the next tick tries again
                logger.warning("rollout tick failed: %s", error)
            await asyncio.sleep(self.interval_s)

    def act(self, route: str, action: RolloutAction) -> RolloutState:
        """An operator's pause, resume or abort."""
        plan = self.plans.get(route)
        if plan is None:
            known = ", ".join(sorted(self.plans)) or "none"
            raise RolloutError(f"route {route!r} has no rollout plan (routes with one: {known})")
        state = plan.state
        if state.status in _FINAL:
            raise RolloutError(
                f"the rollout on route {route!r} is {state.status} ({state.reason}): nothing to {action}; "
                "set a new canary.candidate in the config to start another"
            )
        if action == "pause":
            self._save(plan, status="paused", reason="paused by an operator")
        elif action == "resume":
            # The step's dwell and samples count again from the resume: what happened meanwhile was not
            # watched by the plan.
            self._save(plan, status="running", reason="resumed by an operator", step_started_at=self.clock())
            plan.marks = self._counts(plan.target)
        else:
            self._finish(plan, "aborted", 0.0, "aborted by an operator")
        return plan.state

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {route: _snapshot(plan) for route, plan in self.plans.items()}

    def close(self) -> None:
        self.store.close()

    # ---- transitions ---------------------------------------------------------------------------

    def _begin(self, target: RolloutTarget, plan_config: RolloutPlanConfig) -> _Plan:
        now = self.clock()
        refusal = self._score_refusal(target, plan_config)
        status: RolloutStatus = "running" if refusal is None else "rejected"
        percent = plan_config.steps[0] if refusal is None else 0.0
        state = RolloutState(
            route=target.route,
            baseline=target.pair[0],
            candidate=target.pair[1],
            step_index=0,
            percent=percent,
            step_started_at=now,
            status=status,
            reason=refusal or f"started at {percent:g}%",
            updated_at=now,
        )
        target.canary.set_percent(percent, by="the rollout plan")
        self.store.save(state)
        if refusal is not None:
            logger.warning("rollout on route %s rejected: %s", target.route, refusal)
        return _Plan(target, plan_config, state, self._counts(target))

    def _step_done(self, plan: _Plan, now: float) -> bool:
        if now - plan.state.step_started_at < plan.steps.dwell_s:
            return False
        baseline, candidate = self._counts(plan.target)
        needed = plan.steps.min_samples
        # At 100 % the baseline gets no traffic: only the candidate's samples can be asked for.
        baseline_ok = plan.state.percent >= 100 or baseline - plan.marks[0] >= needed
        return baseline_ok and candidate - plan.marks[1] >= needed

    def _advance(self, plan: _Plan, now: float) -> None:
        index = plan.state.step_index + 1
        if index >= len(plan.steps.steps):
            self._finish(plan, "completed", 100.0, self._promote(plan.target))
            return
        percent = plan.steps.steps[index]
        plan.target.canary.set_percent(percent, by="the rollout plan")
        plan.marks = self._counts(plan.target)
        reason = f"advanced to {percent:g}% after {now - plan.state.step_started_at:.0f} s"
        self._save(plan, step_index=index, percent=percent, step_started_at=now, reason=reason)
        logger.info("rollout on route %s %s", plan.target.route, reason)

    def _finish(self, plan: _Plan, status: RolloutStatus, percent: float, reason: str) -> None:
        plan.target.canary.set_percent(percent, by="the rollout plan")
        self._save(plan, status=status, percent=percent, reason=reason)
        logger.warning("rollout on route %s %s: %s", plan.target.route, status, reason)

    def _save(self, plan: _Plan, **changes: Any) -> None:
        for field, value in {**changes, "updated_at": self.clock()}.items():
            setattr(plan.state, field, value)
        self._store(plan)

    def _store(self, plan: _Plan) -> None:
        try:
            self.store.save(plan.state)
        except RolloutError:
            # The router already acts on the transition: every tick stores it again until the database
            # takes it, or a restart would resume from the step before.
            self._unsaved.add(plan.state.route)
            raise
        self._unsaved.discard(plan.state.route)

    @staticmethod
    def _counts(target: RolloutTarget) -> tuple[int, int]:
        return target.baseline.num_requests, target.candidate.num_requests

    # ---- the registry: scores and promotion ----------------------------------------------------

    def _score_refusal(self, target: RolloutTarget, plan_config: RolloutPlanConfig) -> str | None:
        """Why the candidate's evaluation scores refuse it; None when they do not (or cannot be compared)."""
        ratio = plan_config.min_score_ratio
        sources = _registry_pair(target)
        if ratio is None or sources is None:
            return None
        with open_catalog(self.catalog_url) as catalog:
            baseline = catalog.resolve(sources[0].name, sources[0].ref)
            candidate = catalog.resolve(sources[1].name, sources[1].ref)
        return _score_regression(baseline, candidate, ratio)

    def _promote(self, target: RolloutTarget) -> str:
        """Point the alias the baseline serves (e.g. prod) at the candidate's version, when both are
        versions of one registry model; the outcome, for the plan's reason."""
        sources = _registry_pair(target)
        if sources is None or sources[0].name != sources[1].name:
            return "completed at 100%"
        baseline, candidate = sources
        try:
            with open_catalog(self.catalog_url) as catalog:
                alias = catalog.alias(baseline.name, baseline.ref)
                if alias is None:
                    return f"completed at 100% ({baseline} names a version, not an alias: nothing promoted)"
                version = catalog.resolve(candidate.name, candidate.ref).version
                if alias.version != version:
                    catalog.promote(baseline.name, version, baseline.ref)
        except RegistryError as error:
            return f"completed at 100%, but promoting {baseline} failed: {error}"
        return f"completed at 100%; promoted {baseline.name}:{baseline.ref} -> {version}"


def _label(deployment: str, source: str | None) -> str:
    return deployment if source is None else f"{deployment} ({source})"


def _registry_pair(target: RolloutTarget) -> tuple[RegistrySource, RegistrySource] | None:
    baseline = parse_registry_source(target.baseline_source)
    candidate = parse_registry_source(target.candidate_source)
    return None if baseline is None or candidate is None else (baseline, candidate)


def _score_regression(baseline: VersionRecord, candidate: VersionRecord, ratio: float) -> str | None:
    for metric in sorted(set(baseline.scores) & set(candidate.scores)):
        floor = baseline.scores[metric] * ratio
        if candidate.scores[metric] < floor:
            return (
                f"{candidate.name}:{candidate.version} scores {metric}={candidate.scores[metric]:g}, below "
                f"{baseline.name}:{baseline.version}'s {baseline.scores[metric]:g} × {ratio:g} = {floor:g} "
                "(canary.rollout.min_score_ratio)"
            )
    return None


def _rollback_reason(canary: CanaryLever) -> str:
    reasons = [d.reason for d in canary.decisions if d.action == "rollback"]
    return f"canary rolled back: {reasons[-1]}" if reasons else "canary rolled back"


def _snapshot(plan: _Plan) -> dict[str, Any]:
    baseline, candidate = RolloutController._counts(plan.target)
    return {
        **asdict(plan.state),
        "steps": plan.steps.steps,
        "dwell_s": plan.steps.dwell_s,
        "min_samples": plan.steps.min_samples,
        "step_samples": {"baseline": baseline - plan.marks[0], "candidate": candidate - plan.marks[1]},
    }
