"""The quality loop in the server: each finished API request reaches payload capture and the drift
monitors from one hook (server/app.py's RequestContext, where the access line is written), and each
finished batch line from the batch executor (server/batch_serving.py).

Batch lines are captured, flagged and can be rated like online requests, but stay out of the drift
windows: a job of thousands of lines would fill the current window with one client's data and raise an
alert that says nothing about the route's live traffic.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from inferline.config.quality import QualityConfig
from inferline.quality.capture import THUMBS_DOWN, PayloadCapture
from inferline.quality.capture_store import CaptureStore, FeedbackRow
from inferline.quality.drift import DriftCollector, DriftMonitor
from inferline.quality.exchange import read_exchange
from inferline.router.arm_stats import ArmStats
from inferline.router.route_state import RouteState
from inferline.router.router import Router
from inferline.telemetry.logs import RequestLog

logger = logging.getLogger(__name__)


class QualityLoop:
    """Capture, drift, and the live quality signals (refusals, feedback) of the canaries' arms."""

    def __init__(
        self,
        config: QualityConfig,
        database_url: str,
        registry: CollectorRegistry,
        router: Router | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.capture = PayloadCapture(config.capture, CaptureStore(database_url))
        self.drift = DriftMonitor(config.drift, self.capture.is_refusal) if config.drift.enabled else None
        if self.drift is not None:
            registry.register(DriftCollector(self.drift))
        canaries = (
            [] if router is None else [s.canary for s in router.routes.values() if s.canary is not None]
        )
        self.judges_refusals = any(c.config.max_refusal_rate_increase is not None for c in canaries)

    @property
    def reads_bodies(self) -> bool:
        """Whether the HTTP layer must copy request and response bodies for `observe`."""
        return self.config.capture.enabled or self.drift is not None or self.judges_refusals

    def _arm(self, route: str, deployment: str) -> tuple[RouteState, ArmStats] | None:
        state = self.router.routes.get(route) if self.router is not None else None
        if state is None or state.canary is None or deployment not in state.arms:
            return None
        return state, state.arms[deployment]

    def record_feedback(self, row: FeedbackRow) -> None:
        """A rating counts on the canary arm that answered (labels without a score: thumbs_down is -1)."""
        score = row.score if row.score is not None else (-1.0 if row.label == THUMBS_DOWN else None)
        found = self._arm(row.route, row.deployment)
        if score is not None and found is not None:
            found[1].record_feedback(score)
            found[0].judge_canary()

    def observe(self, log: RequestLog) -> None:
        """Called once the response has gone, with the request's usage record and bodies."""
        if log.usage is None:
            return
        try:
            exchange = read_exchange(
                log.usage,
                bytes(log.request_body or b""),
                bytes(log.response_body or b""),
                log.prompt_template,
            )
            self.capture.observe(exchange)
            if self.drift is not None and exchange.usage.batch_id is None:
                self.drift.observe(exchange)
            found = self._arm(exchange.usage.route, exchange.usage.deployment)
            if self.judges_refusals and found is not None and exchange.usage.outcome == "ok":
                found[1].record_refusal(any(self.capture.is_refusal(t) for t in exchange.completions))
                found[0].judge_canary()
        except Exception:  # the request has been answered; nothing here may disturb the server
            logger.exception("quality loop failed on request %s", log.request_id)
