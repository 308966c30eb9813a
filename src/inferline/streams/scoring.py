"""A batch of message payloads through the router: one model call for the batch (infer, embed) or one per
message (generate), in the stream's priority class, routed, limited and metered like any request.

Design note: a payload the task cannot use (no `inputs`, a row of the wrong shape, no `text`, a field the
template names missing) is `bad` at once: trying it again cannot help. A model call that fails for the
whole batch is repeated message by message, so one poison message fails alone and the rest get their
results. Busy answers (a full queue, admission over the class budget, a quota, a model still loading)
are not the message's fault: the batch waits and tries again, and while it waits the worker reads
nothing more; that is the back-pressure.

With an `observe` hook (the server's quality loop), each model call's usage record reaches it with the
work in the online API's shapes, so one reader serves both: OIP v2 input tensors (infer), an embeddings
`input` (embed), chat messages and the answer as a chat completion (generate).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from inferline.backends.base import EmbeddingResult, TensorSpec
from inferline.config import StreamConfig
from inferline.errors import (
    BackendUnavailableError,
    LimitExceededError,
    ModelNotReadyError,
    QueueFullError,
)
from inferline.router.deployments import Deployment
from inferline.router.limits import Principal
from inferline.router.request import Caller, WorstCase
from inferline.router.router import Router
from inferline.telemetry.logs import RequestLog, work_log
from inferline.types import Delta, Priority, Request, SamplingParams

logger = logging.getLogger(__name__)

T = TypeVar("T")

BUSY = (QueueFullError, ModelNotReadyError, BackendUnavailableError, LimitExceededError)
"""Errors that say the model cannot take the work now, not that the message is wrong."""
MAX_BUSY_WAIT_S = 5.0

_NUMPY_DTYPES = {
    "BOOL": "bool",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    **{f"INT{b}": f"int{b}" for b in (8, 16, 32, 64)},
    **{f"UINT{b}": f"uint{b}" for b in (8, 16, 32, 64)},
}
_PROCESS_ID = secrets.token_hex(4)
_NEXT_ID = itertools.count(1)


class BadPayloadError(ValueError):
    """The payload cannot be scored by this stream's task, whatever the model does."""


@dataclass(frozen=True)
class Scored:
    """What scoring made of one payload: a result, or why there is none."""

    result: dict[str, Any] | None
    error: str | None = None
    bad_payload: bool = False
    """True when the payload itself is unusable (dead-lettered at once, never retried)."""


Observe = Callable[[RequestLog], None]
"""Takes a finished model call's RequestLog: its usage record, and its request and answer as JSON bodies."""


class Scorer:
    def __init__(self, config: StreamConfig, router: Router, observe: Observe | None = None) -> None:
        self.config = config
        self.router = router
        self.observe = observe
        self.priority = Priority.parse(config.priority)
        self.principal = Principal.from_config(router.config, config.tenant)

    async def score(self, payloads: list[Any]) -> list[Scored]:
        """One `Scored` per payload, in order."""
        if self.config.task == "generate":
            return list(await asyncio.gather(*(self._generate(p) for p in payloads)))
        prepared: list[tuple[int, Any]] = []
        scored: list[Scored | None] = [None] * len(payloads)
        for index, payload in enumerate(payloads):
            try:
                prepared.append((index, self._prepare(payload)))
            except BadPayloadError as error:
                scored[index] = Scored(None, f"bad payload: {error}", bad_payload=True)
        for (index, _), result in zip(
            prepared, await self._score_prepared([p for _, p in prepared]), strict=True
        ):
            scored[index] = result
        return [s for s in scored if s is not None]

    async def _score_prepared(self, items: list[Any]) -> list[Scored]:
        if not items:
            return []
        try:
            return [Scored(r) for r in await self._call_batch(items)]
        except Exception as error:  # the model refused the batch: find the message it refused
            if len(items) == 1:
                return [Scored(None, f"model error: {type(error).__name__}: {error}")]
            logger.info(
                "stream %s: a batch of %d failed (%s); scoring one by one",
                self.config.name,
                len(items),
                error,
            )
            return [s for item in items for s in await self._score_prepared([item])]

    # ---- the tasks ----------------------------------------------------------------------------

    def _prepare(self, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise BadPayloadError("must be a JSON object")
        if self.config.task == "embed":
            text = payload.get("text")
            if not isinstance(text, str) or not text:
                raise BadPayloadError("`text` must be a non-empty string")
            return text
        inputs = payload.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise BadPayloadError("`inputs` must be an object of input name -> one row")
        specs = {spec.name: spec for spec in self._deployment().backend.metadata.inputs}
        return {name: _row(name, value, specs) for name, value in inputs.items()}

    async def _call_batch(self, items: list[Any]) -> list[dict[str, Any]]:
        """One model call per deployment-sized chunk (a call over its max_batch_size would be refused)."""
        size = getattr(self._deployment().config, "max_batch_size", len(items))
        if len(items) > size:
            chunks = [items[i : i + size] for i in range(0, len(items), size)]
            return [r for part in await asyncio.gather(*map(self._call_batch, chunks)) for r in part]
        if self.config.task == "embed":
            texts: list[str] = items

            async def embed(deployment: Deployment, final: bool) -> EmbeddingResult:
                return await deployment.within(deployment.backend.embed(texts))

            worst_case = WorstCase(sum(len(t.encode()) for t in texts), 0)
            embedded = await self._routed(embed, worst_case, lambda r: r.num_tokens, {"input": texts})
            return [{"embedding": vector.tolist()} for vector in embedded.vectors]
        names = items[0].keys()
        stacked = {name: np.stack([item[name] for item in items]) for name in names}

        async def infer(deployment: Deployment, final: bool) -> dict[str, np.ndarray]:
            return await deployment.within(deployment.backend.infer(stacked))

        shown = {"inputs": _oip_tensors(stacked)} if self.observe is not None else {}  # tolist() costs
        outputs = await self._routed(infer, WorstCase(0, 0), lambda _: 0, shown)
        return [
            {"outputs": {name: array[i].tolist() for name, array in outputs.items()}}
            for i in range(len(items))
        ]

    async def _generate(self, payload: Any) -> Scored:
        try:
            if not isinstance(payload, dict):
                raise BadPayloadError("must be a JSON object")
            prompt = self.config.prompt_template.format_map(payload)  # type: ignore[union-attr]
        except (BadPayloadError, KeyError, IndexError, ValueError) as error:
            return Scored(None, f"bad payload: {type(error).__name__}: {error}", bad_payload=True)
        messages = [{"role": "user", "content": prompt}]

        async def generate(deployment: Deployment, final: bool) -> tuple[str, int, int]:
            request = Request(
                self._request_id(),
                sampling=SamplingParams(max_tokens=self.config.max_tokens, temperature=0.0),
                priority=self.priority,
                tenant=self.principal.tenant,
                messages=messages,
            )
            return await deployment.within(_collect(deployment.backend.generate(request)))

        worst_case = WorstCase(len(prompt.encode()), self.config.max_tokens)
        try:
            text, _, _ = await self._routed(
                generate,
                worst_case,
                lambda r: r[1],
                {"messages": messages},
                lambda r: {"choices": [{"index": 0, "message": {"role": "assistant", "content": r[0]}}]},
                lambda r: r[2],
            )
        except Exception as error:
            return Scored(None, f"model error: {type(error).__name__}: {error}")
        return Scored({"text": text})

    # ---- the router ---------------------------------------------------------------------------

    async def _routed(
        self,
        call: Callable[[Deployment, bool], Awaitable[T]],
        worst_case: WorstCase,
        prompt_tokens: Callable[[T], int],
        request_body: dict[str, Any],
        answer_body: Callable[[T], dict[str, Any]] = lambda _: {},
        completion_tokens: Callable[[T], int] = lambda _: 0,
    ) -> T:
        """The call through the router; busy answers wait and try again (the back-pressure). The
        bodies are what `observe` is shown of the call (the answer's only when it is worth keeping)."""
        while True:
            caller = Caller(
                self._request_id(), self.principal, self.priority, endpoint=f"stream:{self.config.name}"
            )
            with work_log(caller.request_id) as log:
                try:
                    routed = await self.router.run(self.config.model, caller, call, worst_case)
                except BUSY as error:
                    if isinstance(error, LimitExceededError) and error.limit == "budget":
                        raise
                    wait_s = getattr(error, "retry_after_s", None) or 1.0
                    await asyncio.sleep(min(MAX_BUSY_WAIT_S, wait_s))
                    continue
                except Exception:
                    self._observe(log, request_body, {})
                    raise
                value = routed.value
                await routed.complete(prompt_tokens(value), completion_tokens(value))
            self._observe(log, request_body, answer_body(value))
            return value

    def _observe(self, log: RequestLog, request_body: dict[str, Any], answer_body: dict[str, Any]) -> None:
        if self.observe is None:
            return
        log.request_body = bytearray(json.dumps(request_body).encode())
        log.response_body = bytearray(json.dumps(answer_body).encode())
        self.observe(log)

    def _deployment(self) -> Deployment:
        """The route's first loaded deployment: its inputs' datatypes and shapes shape the rows."""
        members = [
            self.router.pool.by_name[n] for n in self.router.resolve(self.config.model).config.members()
        ]
        return next((d for d in members if d.ready), members[0])

    def _request_id(self) -> str:
        return f"stream-{self.config.name}-{_PROCESS_ID}{next(_NEXT_ID):012x}"


def _row(name: str, value: Any, specs: dict[str, TensorSpec]) -> np.ndarray:
    """One message's row of an input, as the model takes it (its batch dimension is the batch)."""
    spec = specs.get(name)
    if spec is None:
        raise BadPayloadError(f"unknown input {name!r}; the model takes {', '.join(specs)}")
    dtype = _NUMPY_DTYPES.get(spec.datatype)
    if dtype is None:
        raise BadPayloadError(f"input {name!r} is {spec.datatype}, which a stream cannot carry")
    try:
        row = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as error:
        raise BadPayloadError(f"input {name!r} does not fit {spec.datatype}: {error}") from None
    expected = spec.shape[1:]
    fits = row.ndim == len(expected) and all(
        want in (-1, got) for want, got in zip(expected, row.shape, strict=True)
    )
    if not fits:
        raise BadPayloadError(
            f"input {name!r} has shape {list(row.shape)}; one row of the model is {expected}"
        )
    return row


def _oip_tensors(stacked: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A batch's input tensors as an OIP v2 request's `inputs` (data in row-major order)."""
    datatypes = {numpy: oip for oip, numpy in _NUMPY_DTYPES.items()}
    return [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatypes.get(str(array.dtype), "BYTES"),
            "data": array.reshape(-1).tolist(),
        }
        for name, array in stacked.items()
    ]


async def _collect(deltas: AsyncIterator[Delta]) -> tuple[str, int, int]:
    """The whole answer: its text, prompt tokens and completion tokens."""
    parts: list[str] = []
    prompt_tokens = completion_tokens = 0
    async for delta in deltas:
        parts.append(delta.text)
        if delta.usage is not None:
            prompt_tokens, completion_tokens = delta.usage.prompt_tokens, delta.usage.completion_tokens
    return "".join(parts), prompt_tokens, completion_tokens


def decode_payload(data: bytes) -> Any:
    """The message's JSON, or BadPayloadError saying why it is none."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadPayloadError(f"not JSON: {error}") from None
