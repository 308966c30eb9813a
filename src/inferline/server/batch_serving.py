"""A batch line as the online endpoint would serve it, without the HTTP round trip: the body is parsed
with the same protocol models, checked against the loaded model's tokenizer and context, and answered
by OpenAIServing in the caller's (batch) priority class, so it is routed, limited and metered as any
request is. Busy answers (a full queue, a rate quota, a model still loading) wait and retry. With an
`observe` hook (the server's quality loop), each line's body, answer and usage record reach it as an
online request's do, so payload capture and feedback cover batch lines too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from inferline.backends.llm import LLMBackend
from inferline.batch.lines import PREFIX_CHARS, LineCheck
from inferline.config.deployments import (
    EmbeddingDeploymentConfig,
    LLMDeploymentConfig,
    OnnxDeploymentConfig,
)
from inferline.errors import (
    BackendUnavailableError,
    InvalidRequestError,
    LimitExceededError,
    ModelNotReadyError,
    QueueFullError,
)
from inferline.router.deployments import Deployment
from inferline.router.request import Caller
from inferline.router.router import Router
from inferline.server.errors import openai_error_body, to_http_error, validation_param
from inferline.server.openai_protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inferline.server.openai_serving import OpenAIServing
from inferline.telemetry.logs import RequestLog, work_log
from inferline.types import Request

DEFAULT_WINDOW = 64
"""Lines in flight when every deployment is a remote upstream (its own capacity is unknown here)."""
MAX_RETRY_WAIT_S = 10.0
READY_POLL_S = 0.2
_BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}


def _step(deployment: Deployment) -> tuple[int, int] | None:
    """(rows computed in one step, max_queued_requests) of a local deployment; None for a remote one."""
    config = deployment.config
    if isinstance(config, LLMDeploymentConfig):
        return config.engine.max_num_seqs, config.max_queued_requests
    if isinstance(config, EmbeddingDeploymentConfig | OnnxDeploymentConfig):
        return config.max_batch_size, config.max_queued_requests
    return None


def _never_gone() -> Any:
    async def watch() -> None:
        await asyncio.Event().wait()

    return watch


class ServingExecutor:
    """The LineExecutor of batch jobs, for the server and `inferline batch run` alike."""

    def __init__(
        self,
        serving: OpenAIServing,
        allow_failed: bool = False,
        observe: Callable[[RequestLog], None] | None = None,
    ) -> None:
        self.serving = serving
        self.router: Router = serving.router
        self.allow_failed = allow_failed
        self.observe = observe
        """Called with each finished line's RequestLog (usage record and both bodies)."""

    async def wait_ready(self) -> None:
        while not self.router.pool.is_ready(self.allow_failed):
            await asyncio.sleep(READY_POLL_S)

    def _parse(self, endpoint: str, body: dict[str, Any]) -> Any:
        try:
            request = _BODIES[endpoint].model_validate(body)
        except ValidationError as error:
            message, param = validation_param(RequestValidationError(error.errors()))
            raise InvalidRequestError(message, param) from None
        if getattr(request, "stream", False):
            raise InvalidRequestError("stream must be false in a batch line", "stream")
        return request

    def _deployments(self, model: str) -> list[Deployment]:
        return [self.router.pool.by_name[name] for name in self.router.resolve(model).config.members()]

    def window(self, models: set[str]) -> int:
        """Two steps' worth of the largest deployment behind `models` (an LLM's max_num_seqs, a runner's
        max_batch_size): the next full step is queued while one runs, so the model never waits for the
        event loop to hand it lines. Within every deployment's max_queued_requests, where a busy answer
        would make lines sleep and retry."""
        local = [step for model in models for d in self._deployments(model) if (step := _step(d))]
        if not local:  # remote upstreams only: no step to fill
            return DEFAULT_WINDOW
        return min([2 * max(rows for rows, _ in local), *(queued for _, queued in local)])

    def check(self, endpoint: str, body: dict[str, Any]) -> LineCheck:
        request = self._parse(endpoint, body)
        deployments = self._deployments(request.model)
        if isinstance(request, EmbeddingRequest):
            texts = request.texts()
            if any(not text for text in texts):
                raise InvalidRequestError("input contains an empty string", "input")
            num_bytes = sum(len(text.encode()) for text in texts)
            cost = max(d.config.cost_usd(num_bytes, 0) for d in deployments)
            return LineCheck(request.model, num_bytes, 0, cost, texts[0][:PREFIX_CHARS])
        if isinstance(request, ChatCompletionRequest):
            messages = [{"role": m.role, "content": m.text()} for m in request.messages]
            prompts: list[Request] = [Request("check", messages=messages)]
            max_tokens, prefix = request.requested_max_tokens(), "".join(m["content"] for m in messages)
        else:
            prompts = [
                Request(
                    "check",
                    list(p) if isinstance(p, list) else [],
                    prompt_text=p if isinstance(p, str) else None,
                )
                for p in request.prompts()
            ]
            max_tokens, prefix = request.max_tokens, str(request.prompts()[0])
        num_prompt = 0
        first = deployments[0]
        for prompt in prompts:
            prompt.sampling.max_tokens = max_tokens
            if isinstance(first.backend, LLMBackend):  # the model's own tokens and context
                num_prompt += len(first.backend.prepare(prompt).prompt_token_ids)
            else:  # a remote upstream: no tokenizer here, a byte is at most a token
                text = (prompt.prompt_text or "") + "".join(m["content"] for m in prompt.messages or [])
                num_prompt += len(text.encode()) + len(prompt.prompt_token_ids)
        per_completion = max_tokens if max_tokens is not None else first.max_output_tokens
        num_completion = per_completion * request.n * len(prompts)
        cost = max(d.config.cost_usd(num_prompt, num_completion) for d in deployments)
        return LineCheck(request.model, num_prompt, num_completion, cost, prefix[:PREFIX_CHARS])

    async def run(self, endpoint: str, body: dict[str, Any], caller: Caller) -> tuple[int, dict[str, Any]]:
        with work_log(caller.request_id) as log:
            status, answer = await self._run(endpoint, body, caller)
        if self.observe is not None:
            log.request_body = bytearray(json.dumps(body).encode())
            log.response_body = bytearray(json.dumps(answer).encode())
            self.observe(log)
        return status, answer

    async def _run(self, endpoint: str, body: dict[str, Any], caller: Caller) -> tuple[int, dict[str, Any]]:
        while True:
            try:
                return 200, await self._answer(endpoint, body, caller)
            except (QueueFullError, ModelNotReadyError, BackendUnavailableError) as error:
                await asyncio.sleep(min(MAX_RETRY_WAIT_S, error.retry_after_s or 1.0))
            except LimitExceededError as error:
                if error.limit == "budget":
                    http = to_http_error(error)
                    return http.status, openai_error_body(http)
                await asyncio.sleep(min(MAX_RETRY_WAIT_S, error.retry_after_s))
            except Exception as error:
                http = to_http_error(error)
                return http.status, openai_error_body(http)

    async def _answer(self, endpoint: str, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        request = self._parse(endpoint, body)
        if isinstance(request, EmbeddingRequest):
            _, answer = await self.serving.embeddings(request, caller)
            return answer
        if isinstance(request, ChatCompletionRequest):
            _, result = await self.serving.chat(request, caller, _never_gone())
        else:
            _, result = await self.serving.completion(request, caller, _never_gone())
        assert isinstance(result, dict)  # stream is refused above
        return result
