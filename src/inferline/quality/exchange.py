"""One finished API request as the quality loop sees it: its usage record, and what was asked and answered,
read back from the request and response bodies the HTTP layer copied.

Design note: capture and drift hook in where the access log does (telemetry/logs.py): the RequestLog of
each HTTP request ends up holding the router's UsageRecord and, when the quality loop is on, copies of both
bodies. Reading the answer from the bytes that went to the client (a JSON answer or a stream's SSE frames)
makes one reader serve every endpoint, streamed or not, without a hook in each route. Batch lines and the
stream workers' model calls hand over a RequestLog of the same shape: the bodies their work would have had
online.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from inferline.telemetry.logs import captured_text
from inferline.types import UsageRecord


@dataclass
class Exchange:
    """A finished request: its usage record, the prompt as sent, and each answer."""

    usage: UsageRecord
    prompt: Any = None
    """Chat: the messages; completions: the prompt; OIP: the inputs; None when the body had none."""
    completions: list[str] = field(default_factory=list)
    """Each choice's text."""
    finish_reasons: list[str] = field(default_factory=list)
    cached_prompt_tokens: int = 0
    prompt_template: str | None = None
    """The client's x-inferline-prompt-template header: which of its templates built the prompt."""
    features: dict[str, list[float]] = field(default_factory=dict)
    """OIP requests: each numeric input's values by feature ("input" for a 1-column tensor, else
    "input[j]" per column)."""

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (a chat's message contents joined), for embeddings and fine-tuning."""
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt, list):
            return "\n".join(
                str(m.get("content") or "") if isinstance(m, dict) else str(m) for m in self.prompt
            )
        return ""


def read_exchange(
    usage: UsageRecord, request_body: bytes, response_body: bytes, prompt_template: str | None
) -> Exchange:
    text = captured_text(request_body, response_body)
    exchange = Exchange(
        usage, text.get("prompt"), text.get("completion", []), prompt_template=prompt_template
    )
    for chunk in _chunks(response_body):
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                exchange.finish_reasons.append(choice["finish_reason"])
        details = (chunk.get("usage") or {}).get("prompt_tokens_details") or {}
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            exchange.cached_prompt_tokens = details["cached_tokens"]
    request = _json(request_body)
    if isinstance(request, dict) and isinstance(request.get("inputs"), list):  # OIP v2, online or a stream's
        exchange.features = oip_features(request["inputs"])
        exchange.prompt = request["inputs"]
    return exchange


def oip_features(inputs: Any) -> dict[str, list[float]]:
    """Numeric OIP input tensors as features: rows of a [N, K] tensor give K columns."""
    features: dict[str, list[float]] = {}
    for tensor in inputs if isinstance(inputs, list) else []:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("data"), list):
            continue
        data, shape = tensor["data"], tensor.get("shape") or [len(tensor["data"])]
        flat = _flatten(data)
        if not flat or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
            continue
        num_columns = int(shape[-1]) if len(shape) > 1 and int(shape[-1]) > 0 else 1
        name = str(tensor.get("name", "input"))
        if num_columns == 1:
            features[name] = [float(v) for v in flat]
        else:
            for column in range(num_columns):
                features[f"{name}[{column}]"] = [float(v) for v in flat[column::num_columns]]
    return features


def _flatten(data: list[Any]) -> list[Any]:
    return (
        [item for part in data for item in _flatten(part)] if any(isinstance(d, list) for d in data) else data
    )


def _chunks(response_body: bytes) -> list[dict[str, Any]]:
    if response_body.startswith(b"data:"):
        parsed = [_json(frame.removeprefix(b"data:")) for frame in response_body.split(b"\n\n")]
    else:
        parsed = [_json(response_body)]
    return [chunk for chunk in parsed if isinstance(chunk, dict)]


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
