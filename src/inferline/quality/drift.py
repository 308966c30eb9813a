"""Drift monitors: per route and model version, the first `window` requests are the reference and the last
`window` the current window; each signal's effect size (quality/drift_stats.py) is compared with its
threshold.

Design note: `observe` only appends a few numbers (and the prompt's text, for the embedding drift) to
bounded deques: it runs on the event loop once per request. The statistics are computed when someone asks,
at a Prometheus scrape or GET /v1/drift, on at most `window` values a side. Prompts are embedded then too,
in one batch through the configured embedding deployment, and each observation keeps its vector, so a
prompt is embedded once. A new model version starts a new reference: drift is a change of traffic against
what the version saw first, not a difference between versions (the canary compares those).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inferline.config.quality import DriftConfig
from inferline.quality import domain_classifier, drift_stats
from inferline.quality.exchange import Exchange

Embed = Callable[[list[str]], Awaitable[np.ndarray]]
"""Texts -> their vectors [N, D] (an embedding deployment's backend)."""
MIN_VALUES = 10
"""A signal present in only some requests (mean logprob, OIP features) needs this many a side."""


@dataclass
class Observation:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    refusal: bool
    mean_logprob: float | None
    cache_hit: bool
    prompt_text: str
    features: dict[str, list[float]]
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class Signal:
    """One judged signal of one route and version."""

    metric: str
    """"prompt_tokens", "completion_tokens", "finish_reason_mix", "refusal_rate", "mean_logprob",
    "cache_hit_rate", "embedding_mmd2", "embedding_auc", "psi:<feature>" or "wasserstein:<feature>"."""
    value: float
    """The effect size (signed where a direction exists)."""
    threshold: float
    alert: bool


@dataclass
class Windows:
    reference: deque[Observation]
    current: deque[Observation]
    num_seen: int = 0

    def add(self, observation: Observation, size: int) -> None:
        self.num_seen += 1
        if len(self.reference) < size:
            self.reference.append(observation)
        else:
            self.current.append(observation)


@dataclass
class DriftReport:
    route: str
    model_version: str
    num_reference: int
    num_current: int
    signals: list[Signal] = field(default_factory=list)

    @property
    def alert(self) -> bool:
        return any(s.alert for s in self.signals)


class DriftMonitor:
    def __init__(self, config: DriftConfig, is_refusal: Callable[[str], bool]) -> None:
        self.config = config
        self.is_refusal = is_refusal
        self.windows: dict[tuple[str, str], Windows] = {}

    def observe(self, exchange: Exchange) -> None:
        usage = exchange.usage
        if usage.outcome != "ok" or not usage.route:
            return
        key = (usage.route, usage.model_version)
        windows = self.windows.get(key)
        if windows is None:
            size = self.config.window
            windows = self.windows[key] = Windows(deque(maxlen=size), deque(maxlen=size))
        windows.add(
            Observation(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                finish_reason=exchange.finish_reasons[0] if exchange.finish_reasons else None,
                refusal=any(self.is_refusal(text) for text in exchange.completions),
                mean_logprob=usage.mean_logprob,
                cache_hit=exchange.cached_prompt_tokens > 0,
                prompt_text=exchange.prompt_text[:2000],
                features=exchange.features,
            ),
            self.config.window,
        )

    async def embed_prompts(self, embed: Embed) -> None:
        """Embed the prompts of each window that the MMD and the classifier will use and that have no
        vector yet."""
        waiting = [o for w in self.windows.values() for o in self._embedded_side(w) if o.embedding is None]
        waiting = [o for o in waiting if o.prompt_text]
        if not waiting:
            return
        vectors = await embed([o.prompt_text for o in waiting])
        for observation, vector in zip(waiting, vectors, strict=True):
            observation.embedding = vector

    def _embedded_side(self, windows: Windows) -> Iterator[Observation]:
        limit = self.config.max_embedded_prompts
        yield from list(windows.reference)[-limit:]
        yield from list(windows.current)[-limit:]

    def reports(self) -> list[DriftReport]:
        return [self.report(route, version) for route, version in sorted(self.windows)]

    def report(self, route: str, model_version: str) -> DriftReport:
        windows = self.windows[(route, model_version)]
        ref, cur = list(windows.reference), list(windows.current)
        report = DriftReport(route, model_version, len(ref), len(cur))
        if len(ref) < self.config.window or len(cur) < self.config.min_samples:
            return report
        report.signals = [*self._traffic_signals(ref, cur), *self._feature_signals(ref, cur)]
        report.signals.extend(self._embedding_signals(windows))
        return report

    def _traffic_signals(self, ref: list[Observation], cur: list[Observation]) -> Iterator[Signal]:
        config = self.config
        for name in ("prompt_tokens", "completion_tokens"):
            d = drift_stats.cohens_d([getattr(o, name) for o in ref], [getattr(o, name) for o in cur])
            yield _signal(name, d, config.max_length_shift)
        reasons = [[o.finish_reason or "none" for o in side] for side in (ref, cur)]
        yield _signal("finish_reason_mix", drift_stats.total_variation(*reasons), config.max_mix_distance)
        refusals = [[o.refusal for o in side] for side in (ref, cur)]
        yield _signal("refusal_rate", drift_stats.rate_difference(*refusals), config.max_rate_shift)
        hits = [[o.cache_hit for o in side] for side in (ref, cur)]
        yield _signal("cache_hit_rate", drift_stats.rate_difference(*hits), config.max_rate_shift)
        logprobs = [[o.mean_logprob for o in side if o.mean_logprob is not None] for side in (ref, cur)]
        if min(len(values) for values in logprobs) >= MIN_VALUES:
            d = drift_stats.cohens_d(*logprobs)
            yield _signal("mean_logprob", d, config.max_logprob_shift)

    def _feature_signals(self, ref: list[Observation], cur: list[Observation]) -> Iterator[Signal]:
        names = sorted({name for o in ref for name in o.features})
        for name in names:
            reference = [v for o in ref for v in o.features.get(name, [])]
            current = [v for o in cur for v in o.features.get(name, [])]
            if min(len(reference), len(current)) < MIN_VALUES:
                continue
            yield _signal(f"psi:{name}", drift_stats.psi(reference, current), self.config.max_psi)
            distance = drift_stats.wasserstein_sd(reference, current)
            yield _signal(f"wasserstein:{name}", distance, self.config.max_wasserstein_sd)

    def _embedding_signals(self, windows: Windows) -> Iterator[Signal]:
        limit = self.config.max_embedded_prompts
        sides = [
            [o.embedding for o in list(side)[-limit:] if o.embedding is not None]
            for side in (windows.reference, windows.current)
        ]
        if min(len(vectors) for vectors in sides) < MIN_VALUES:
            return
        reference, current = np.stack(sides[0]), np.stack(sides[1])
        yield _signal("embedding_mmd2", drift_stats.mmd2(reference, current), self.config.max_mmd)
        auc = domain_classifier.classifier_auc(reference, current)
        yield _signal("embedding_auc", auc, self.config.max_classifier_auc)


def _signal(metric: str, value: float, threshold: float) -> Signal:
    return Signal(metric, round(value, 6), threshold, abs(value) > threshold)


def report_dict(report: DriftReport) -> dict[str, Any]:
    return {
        "route": report.route,
        "model_version": report.model_version,
        "num_reference": report.num_reference,
        "num_current": report.num_current,
        "alert": report.alert,
        "signals": [vars(signal) for signal in report.signals],
    }


class DriftCollector(Collector):
    """inferline_drift_effect_size and inferline_drift_alert per route, version and metric, at scrape."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["route", "model_version", "metric"]
        size = GaugeMetricFamily(
            "inferline_drift_effect_size",
            "Drift of the current window against the reference (quality.drift; see /v1/drift).",
            labels=labels,
        )
        threshold = GaugeMetricFamily(
            "inferline_drift_threshold", "The effect size above which the signal alerts.", labels=labels
        )
        alert = GaugeMetricFamily(
            "inferline_drift_alert",
            "1 while the signal's |effect size| is over its threshold.",
            labels=labels,
        )
        for report in self.monitor.reports():
            for signal in report.signals:
                key = [report.route, report.model_version, signal.metric]
                size.add_metric(key, signal.value)
                threshold.add_metric(key, signal.threshold)
                alert.add_metric(key, float(signal.alert))
        yield from (size, threshold, alert)
