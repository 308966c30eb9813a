"""The stub upstream's answers in OpenAI's shapes: a generation request decoded into a `Plan`, and the
bodies and stream frames of a fixed reply. Stream frames are built from pre-encoded pieces."""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import Any


@dataclass
class Plan:
    """One generation request, decoded."""

    chat: bool
    model: str
    n: int
    num_tokens: int
    finish_reason: str
    num_prompt_tokens: int
    logprobs: int | None
    stream: bool
    include_usage: bool


@dataclass
class StreamFrames:
    """A streamed answer's data frames, in the order they are sent."""

    preamble: list[bytes]
    """Chat: each choice's role chunk."""
    tokens: list[bytes]
    """One chunk per token and choice."""
    tail: list[bytes]
    """Each choice's finish chunk, then the usage chunk when asked for (without the closing [DONE])."""


class BadRequestError(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class Reply:
    """A fixed reply whose words are its tokens (the first as is, the others after a space), repeated to
    `num_tokens`, which defaults to the number of words."""

    def __init__(self, text: str, num_tokens: int | None = None) -> None:
        words = text.split() or ["ok"]
        self.num_tokens = num_tokens or len(words)
        self.first_token = words[0]
        self.tokens = [" " + w for w in words]
        self._token_json = [json.dumps(t) for t in self.tokens]
        self._first_json = json.dumps(self.first_token)
        self._num_ids = 0

    def token(self, i: int) -> str:
        return self.first_token if i == 0 else self.tokens[i % len(self.tokens)]

    def _token_json_at(self, i: int) -> str:
        return self._first_json if i == 0 else self._token_json[i % len(self.tokens)]

    def plan(self, chat: bool, body: dict[str, Any], omit_usage: bool) -> Plan:
        """BadRequestError naming the first field it cannot serve."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("field 'model' is required", "model")
        n, max_tokens = body.get("n") or 1, body.get("max_tokens", body.get("max_completion_tokens"))
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise BadRequestError(f"n must be an integer in [1, 128]; got {n!r}", "n")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise BadRequestError(f"max_tokens must be an integer >= 1; got {max_tokens!r}", "max_tokens")
        num_tokens, finish_reason = self.num_tokens, "stop"
        if max_tokens is not None and (max_tokens < num_tokens or body.get("ignore_eos")):
            num_tokens, finish_reason = max_tokens, "length"
        options = body.get("stream_options") or {}
        return Plan(
            chat,
            model,
            n,
            num_tokens,
            finish_reason,
            prompt_words(body, chat),
            requested_logprobs(body, chat),
            bool(body.get("stream")),
            bool(options.get("include_usage")) and not omit_usage,
        )

    def completion(self, plan: Plan) -> bytes:
        """The whole answer as one JSON body."""
        text = "".join(self.token(i) for i in range(plan.num_tokens))
        choices = []
        for index in range(plan.n):
            choice: dict[str, Any] = {"index": index, "finish_reason": plan.finish_reason, "logprobs": None}
            if plan.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            if plan.logprobs is not None:
                choice["logprobs"] = self._logprobs(plan, range(plan.num_tokens))
            choices.append(choice)
        response = self._envelope(plan, "chat.completion" if plan.chat else "text_completion")
        response["choices"] = choices
        response["usage"] = usage(plan.num_prompt_tokens, plan.n * plan.num_tokens)
        return json.dumps(response).encode()

    def stream_frames(self, plan: Plan) -> StreamFrames:
        head = self._chunk_head(plan)
        role = b'{"index":%d,"delta":{"role":"assistant","content":""}}]}'
        preamble = [head + role % i for i in range(plan.n)] if plan.chat else []
        tokens = [
            self._token_frame(plan, head, i, index) for i in range(plan.num_tokens) for index in range(plan.n)
        ]
        tail = [
            head
            + b'{"index":%d,%s,"logprobs":null,"finish_reason":"%s"}]}'
            % (index, b'"delta":{}' if plan.chat else b'"text":""', plan.finish_reason.encode())
            for index in range(plan.n)
        ]
        if plan.include_usage:
            usage_json = json.dumps(usage(plan.num_prompt_tokens, plan.n * plan.num_tokens)).encode()
            tail.append(head[: -len(b',"choices":[')] + b',"choices":[],"usage":%s}' % usage_json)
        return StreamFrames(preamble, tokens, tail)

    def _envelope(self, plan: Plan, object_type: str) -> dict[str, Any]:
        self._num_ids += 1
        prefix = "chatcmpl" if plan.chat else "cmpl"
        return {
            "id": f"{prefix}-stub-{self._num_ids}",
            "object": object_type,
            "created": int(time.time()),
            "model": plan.model,
        }

    def _chunk_head(self, plan: Plan) -> bytes:
        envelope = self._envelope(plan, "chat.completion.chunk" if plan.chat else "text_completion")
        return json.dumps(envelope, separators=(",", ":")).encode()[:-1] + b',"choices":['

    def _token_frame(self, plan: Plan, head: bytes, i: int, index: int) -> bytes:
        text = self._token_json_at(i).encode()
        logprobs = b"null" if plan.logprobs is None else json.dumps(self._logprobs(plan, [i])).encode()
        if plan.chat:
            return head + b'{"index":%d,"delta":{"content":%s},"logprobs":%s,"finish_reason":null}]}' % (
                index,
                text,
                logprobs,
            )
        return head + b'{"index":%d,"text":%s,"logprobs":%s,"finish_reason":null}]}' % (index, text, logprobs)

    def _logprobs(self, plan: Plan, positions: range | list[int]) -> dict[str, Any]:
        """The chosen token at -0.25, then k-1 alternatives `<altJ>` at -(J+1)."""
        k = plan.logprobs or 0
        tops = [
            [(self.token(i), -0.25)] + [(f"<alt{j}>", -(j + 1.0)) for j in range(1, k)] for i in positions
        ]
        tokens = [self.token(i) for i in positions]
        if plan.chat:
            return {
                "content": [
                    {
                        "token": t,
                        "logprob": -0.25,
                        "bytes": list(t.encode()),
                        "top_logprobs": [
                            {"token": a, "logprob": lp, "bytes": list(a.encode())} for a, lp in top[:k]
                        ],
                    }
                    for t, top in zip(tokens, tops, strict=True)
                ]
            }
        offsets = [sum(len(self.token(j)) for j in range(i)) for i in positions]
        return {
            "tokens": tokens,
            "token_logprobs": [-0.25] * len(tokens),
            "top_logprobs": [dict(top[:k]) for top in tops],
            "text_offset": offsets,
        }


def embeddings(body: dict[str, Any], dim: int) -> bytes:
    """The /v1/embeddings answer: one deterministic vector per input text; BadRequestError on bad input."""
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise BadRequestError("input must be a non-empty string or list of them", "input")
    data = [
        {"object": "embedding", "index": i, "embedding": embedding(text, dim)} for i, text in enumerate(texts)
    ]
    num_tokens = sum(len(t.split()) for t in texts)
    payload = {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
    }
    return json.dumps(payload).encode()


def prompt_words(body: dict[str, Any], chat: bool) -> int:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError("messages must be a non-empty list", "messages")
        return sum(words(m.get("content")) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt")
    if not prompt:
        raise BadRequestError("prompt must be a non-empty string or token list", "prompt")
    return words(prompt)


def words(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):  # token ids, several prompts, or content parts
        return sum(
            1 if isinstance(c, int) else words(c.get("text") if isinstance(c, dict) else c) for c in content
        )
    return 0


def requested_logprobs(body: dict[str, Any], chat: bool) -> int | None:
    if chat:
        return int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
    value = body.get("logprobs")
    return None if value is None else int(value)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def embedding(text: str, dim: int) -> list[float]:
    """Deterministic across processes (crc32, not hash()), different per text."""
    seed = zlib.crc32(text.encode())
    return [((seed * (j + 1) * 2654435761) % 2001) / 1000 - 1.0 for j in range(dim)]


def error_body(message: str, status: int, param: str | None = None, type_: str | None = None) -> bytes:
    kind = type_ or ("invalid_request_error" if status < 500 else "server_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}}).encode()
