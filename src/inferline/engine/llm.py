"""The offline Python API, shaped like vLLM's: `LLM().generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from inferline.config import EngineConfig
from inferline.engine.core import EngineCore
from inferline.engine.model_loader import LoadedModel
from inferline.types import Delta, Priority, Request, SamplingParams, TokenLogprob, Usage

Prompt = str | list[int]
Message = dict[str, Any]


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    usage: Usage | None = None

    @property
    def finished(self) -> bool:
        return all(o.finish_reason is not None for o in self.outputs)

    def add(self, delta: Delta) -> None:
        out = self.outputs[delta.index]
        out.text += delta.text
        out.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            out.logprobs = (out.logprobs or []) + delta.logprobs
        if delta.finish_reason is not None:
            out.finish_reason, out.stop_reason = delta.finish_reason, delta.stop_reason
        if delta.usage is not None:
            self.usage = delta.usage


class LLM:
    """Loads a model once and runs batches of prompts through the engine to completion."""

    def __init__(
        self, model: str = "default", *, loaded: LoadedModel | None = None, **engine_options: Any
    ) -> None:
        self.engine = EngineCore(EngineConfig(model=model, **engine_options), loaded)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        priority: Priority = Priority.CONVERSATIONAL,
        tenant: str = "default",
        on_delta: Callable[[Delta], None] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids) in one continuous batch; outputs keep input order.
        `on_delta` sees each delta as the engine produces it (`inferline chat` streams the text with it)."""
        prompt_list: list[Prompt]
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompt_list = [cast(Prompt, prompts)]
        else:
            prompt_list = list(cast(Sequence[Prompt], prompts))
        params = self._params_for(sampling_params, len(prompt_list))
        outputs: dict[str, RequestOutput] = {}
        for prompt, sampling in zip(prompt_list, params, strict=True):
            text = prompt if isinstance(prompt, str) else None
            token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            request = Request(f"llm-{next(self._ids)}", token_ids, sampling, priority, tenant)
            self.engine.add_request(request)
            outputs[request.request_id] = RequestOutput(
                request.request_id, text, token_ids, [CompletionOutput(i) for i in range(sampling.n)]
            )
        try:
            while self.engine.has_unfinished():
                for delta in self.engine.step():
                    outputs[delta.request_id].add(delta)
                    if on_delta is not None:
                        on_delta(delta)
        finally:
            for request_id in list(outputs):
                self.engine.abort(request_id)
        return list(outputs.values())

    def chat(
        self,
        conversations: list[Message] | Sequence[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        **options: Any,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation, then generate."""
        if conversations and isinstance(conversations[0], dict):
            batch = [cast(list[Message], conversations)]
        else:
            batch = [list(c) for c in cast(Sequence[list[Message]], conversations)]
        # The template already writes any BOS token the model wants, so encode without adding another.
        prompts: list[Prompt] = [
            self.tokenizer.encode(self.tokenizer.apply_chat_template(c), add_special_tokens=False)
            for c in batch
        ]
        return self.generate(prompts, sampling_params, **options)

    @staticmethod
    def _params_for(
        sampling_params: SamplingParams | Sequence[SamplingParams] | None, count: int
    ) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams() for _ in range(count)]
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        if len(sampling_params) != count:
            raise ValueError(
                f"got {len(sampling_params)} SamplingParams for {count} prompts; pass one or one each"
            )
        return list(sampling_params)
