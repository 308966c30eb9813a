"""Payload capture: which requests are kept, redacted before anything is written, and the feedback on them.

Design note: `observe` runs on the event loop once per finished API request, after its response has gone
(quality/exchange.py says where it hooks in). It decides at once: a request is captured when it is flagged
(low confidence, a cascade escalation, an error, a refusal) or drawn by its route's sample rate. The text is
redacted right there, before it is held anywhere, and the write goes to one background thread, so requests
never wait on the database. The last `max_recent` requests are remembered in memory (their owner and, when
capture is on, their redacted payload): feedback checks its tenant against them, and a thumbs-down on one
that was not sampled captures it after all. Feedback on older requests is checked against the captured
table; a request neither remembered nor captured cannot be rated (404, the same answer whether it never
existed or belongs to another tenant, so ids of other tenants cannot be probed).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from inferline.config.quality import CaptureConfig
from inferline.errors import InvalidRequestError, NotFoundError
from inferline.quality.capture_store import CapturedRow, CaptureStore, CaptureStoreError, FeedbackRow
from inferline.quality.exchange import Exchange
from inferline.quality.redaction import Redactor

logger = logging.getLogger(__name__)

LOW_CONFIDENCE, ESCALATED, ERROR, REFUSAL, SAMPLED, THUMBS_DOWN = (
    "low_confidence",
    "escalated",
    "error",
    "refusal",
    "sampled",
    "thumbs_down",
)
FLAGS = (LOW_CONFIDENCE, ESCALATED, ERROR, REFUSAL, SAMPLED, THUMBS_DOWN)
PRUNE_EVERY = 100
"""Retention limits are applied after this many writes (and at start)."""
MAX_LABEL_CHARS = 64
MAX_COMMENT_CHARS = 4000


@dataclass(frozen=True)
class FeedbackBody:
    """POST /v1/feedback, validated."""

    request_id: str
    score: float | None
    label: str | None
    comment: str | None

    def is_negative(self) -> bool:
        return (self.score is not None and self.score < 0) or self.label == THUMBS_DOWN


class PayloadCapture:
    """`observe(exchange)` per finished request, `feedback(tenant, body)`, `drain()` in tests and at
    shutdown, `close()` once."""

    def __init__(self, config: CaptureConfig, store: CaptureStore, seed: int | None = None) -> None:
        self.config = config
        self.store = store
        self.redactor = Redactor(config.redact_patterns)
        self.refusals = [re.compile(p, re.IGNORECASE) for p in config.refusal_patterns]
        self._rng = random.Random(seed)
        self._recent: OrderedDict[str, CapturedRow] = OrderedDict()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferline-capture")
        self._pending: list[Future[None]] = []
        self._num_writes = 0

    def start(self) -> None:
        if self.config.enabled:
            self._submit(self._prune)

    def is_refusal(self, text: str) -> bool:
        return any(pattern.search(text) for pattern in self.refusals)

    def flags(self, exchange: Exchange) -> list[str]:
        usage, config = exchange.usage, self.config
        flags = []
        threshold = config.min_mean_logprob
        if threshold is not None and usage.mean_logprob is not None and usage.mean_logprob < threshold:
            flags.append(LOW_CONFIDENCE)
        if config.capture_escalations and (usage.cascade_stage or 1) > 1:
            flags.append(ESCALATED)
        if config.capture_errors and usage.outcome == "error":
            flags.append(ERROR)
        if any(self.is_refusal(text) for text in exchange.completions):
            flags.append(REFUSAL)
        return flags

    def observe(self, exchange: Exchange) -> None:
        """Remember the request; capture it when flagged or drawn. O(size of the text), no I/O."""
        usage = exchange.usage
        if not usage.request_id or not usage.route:
            return
        flags = self.flags(exchange) if self.config.enabled else []
        rate = self.config.route_sample_rates.get(usage.route, self.config.sample_rate)
        if self.config.enabled and not flags and rate > 0 and self._rng.random() < rate:
            flags.append(SAMPLED)
        row = self._row(exchange, flags)
        self._remember(row)
        if flags:
            self._capture(row)

    def _row(self, exchange: Exchange, flags: list[str]) -> CapturedRow:
        usage = exchange.usage
        keep_text = self.config.enabled
        return CapturedRow(
            request_id=usage.request_id,
            tenant=usage.tenant,
            route=usage.route,
            policy=usage.policy,
            deployment=usage.deployment,
            model_version=usage.model_version,
            cascade_stage=usage.cascade_stage,
            degraded=usage.degraded,
            endpoint=usage.endpoint,
            prompt_template=exchange.prompt_template,
            # Redacted here, before the row is held in memory or handed to the writer.
            prompt=self.redactor.redact_json(exchange.prompt) if keep_text else None,
            completion=[self.redactor.redact(text) for text in exchange.completions] if keep_text else [],
            finish_reason=exchange.finish_reasons[0] if exchange.finish_reasons else None,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            mean_logprob=usage.mean_logprob,
            outcome=usage.outcome,
            flags=flags,
            captured_at=usage.finished_at,
        )

    def _remember(self, row: CapturedRow) -> None:
        if self.config.max_recent == 0:
            return
        self._recent[row.request_id] = row
        while len(self._recent) > self.config.max_recent:
            self._recent.popitem(last=False)

    def _capture(self, row: CapturedRow) -> None:
        self._submit(lambda: self._write(row))

    def _write(self, row: CapturedRow) -> None:
        self.store.insert(row)
        self._num_writes += 1
        if self._num_writes % PRUNE_EVERY == 0:
            self._prune()

    def _prune(self) -> None:
        self.store.prune(self.config.max_records, self.config.max_age_s, time.time())

    def _submit(self, work: Callable[[], None]) -> None:
        future = self._writer.submit(work)
        future.add_done_callback(_log_failure)
        self._pending = [f for f in self._pending if not f.done()] + [future]

    # ---- feedback -------------------------------------------------------------------------------

    def feedback(self, tenant: str, body: FeedbackBody) -> FeedbackRow:
        """Store the tenant's feedback on its own request (a thumbs-down captures a remembered one).
        Blocking (a database read and write): call it off the event loop."""
        _check(body)
        known = self._recent.get(body.request_id) or self.store.owner(body.request_id)
        if known is None or known.tenant != tenant:
            raise NotFoundError(
                f"request_id {body.request_id!r} is not a request of this tenant that the server still "
                f"knows (the last {self.config.max_recent} requests, and captured ones, can be rated)"
            )
        comment = self.redactor.redact(body.comment) if body.comment is not None else None
        row = FeedbackRow(
            request_id=body.request_id,
            tenant=tenant,
            route=known.route,
            deployment=known.deployment,
            model_version=known.model_version,
            score=body.score,
            label=body.label,
            comment=comment,
            created_at=time.time(),
        )
        self.store.add_feedback(row)
        if body.is_negative() and self.config.enabled and self.config.capture_thumbs_down:
            self._thumbs_down(known)
        return row

    def _thumbs_down(self, known: CapturedRow) -> None:
        self.drain()
        if not self.store.add_flag(known.request_id, THUMBS_DOWN) and known.prompt is not None:
            self.store.insert(replace(known, flags=[*known.flags, THUMBS_DOWN]))

    def drain(self) -> None:
        """Wait until every capture handed to the writer so far is written."""
        for future in list(self._pending):
            future.exception()

    def close(self) -> None:
        self.drain()
        self._writer.shutdown(wait=True)
        self.store.close()


def _check(body: FeedbackBody) -> None:
    if body.score is None and body.label is None:
        raise InvalidRequestError(
            "feedback needs a score (in [-1, 1]) or a label (e.g. thumbs_down)", "score"
        )
    if body.score is not None and not -1 <= body.score <= 1:
        raise InvalidRequestError(f"score must be in [-1, 1] (1 best); got {body.score}", "score")
    if body.label is not None and not 0 < len(body.label) <= MAX_LABEL_CHARS:
        raise InvalidRequestError(f"label must be 1 to {MAX_LABEL_CHARS} characters", "label")
    if body.comment is not None and len(body.comment) > MAX_COMMENT_CHARS:
        raise InvalidRequestError(f"comment is over {MAX_COMMENT_CHARS} characters: shorten it", "comment")


def _log_failure(future: Future[None]) -> None:
    error = future.exception()
    if isinstance(error, CaptureStoreError):
        logger.error("payload capture not written: %s", error)
    elif error is not None:
        logger.error("payload capture failed", exc_info=error)
