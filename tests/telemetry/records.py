"""Hand-made UsageRecords for the telemetry tests: each test names only the fields it is about."""

from __future__ import annotations

from typing import Any

from inferline.types import UsageRecord


def usage_record(**fields: Any) -> UsageRecord:
    """An answered chat request of tenant alpha on deployment small; `fields` override any of it."""
    values: dict[str, Any] = {
        "request_id": "r",
        "tenant": "alpha",
        "route": "chat",
        "deployment": "small",
        "model_version": "1",
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "ttft_s": 0.1,
        "latency_s": 0.3,
        "outcome": "ok",
    }
    return UsageRecord(**{**values, **fields})
