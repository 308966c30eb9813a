"""The quality loop in the server: each finished API request reaches payload capture and the drift
monitors from one hook (server/app.py's RequestContext, where the access line is written)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from inferline.config.quality import QualityConfig
from inferline.quality.capture import PayloadCapture
from inferline.quality.capture_store import CaptureStore
from inferline.quality.drift import DriftCollector, DriftMonitor
from inferline.quality.exchange import read_exchange
from inferline.telemetry.logs import RequestLog

logger = logging.getLogger(__name__)


class QualityLoop:
    def __init__(self, config: QualityConfig, database_url: str, registry: CollectorRegistry) -> None:
        self.config = config
        self.capture = PayloadCapture(config.capture, CaptureStore(database_url))
        self.drift = DriftMonitor(config.drift, self.capture.is_refusal) if config.drift.enabled else None
        if self.drift is not None:
            registry.register(DriftCollector(self.drift))

    @property
    def reads_bodies(self) -> bool:
        """Whether the HTTP layer must copy request and response bodies for `observe`."""
        return self.config.capture.enabled or self.drift is not None

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
            if self.drift is not None:
                self.drift.observe(exchange)
        except Exception:  # the request has been answered; nothing here may disturb the server
            logger.exception("quality loop failed on request %s", log.request_id)
