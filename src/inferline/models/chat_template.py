"""Render a model's Jinja chat template, the way Hugging Face's `apply_chat_template` does.

Design note: chat templates are code shipped inside model files, so they run in jinja2's
immutable sandbox. The environment matches transformers' (trim_blocks, lstrip_blocks,
loop controls, `raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII) so that
templates written for it render the same here. The template compiles once per model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
from jinja2 import meta
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferline.errors import InvalidRequestError, ModelLoadError
from inferline.models.tool_prompt import for_tool_template, has_tool_turns, in_hermes_form


def _raise_exception(message: str) -> NoReturn:
    # Templates call this to reject a conversation they cannot format (e.g. roles not alternating).
    raise InvalidRequestError(f"the model's chat template rejected the messages: {message}", param="messages")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    """A compiled chat template and the special-token strings it may reference."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
            referenced = meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise ModelLoadError(
                f"the model's chat template is not valid Jinja (line {exc.lineno}): {exc}"
            ) from exc
        self.source = source
        self.supports_tools = "tools" in referenced
        """The template renders `tools` itself; otherwise tools are offered in the Hermes form
        (tool_prompt.py)."""
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt text for `messages`; `tools` are function tools in OpenAI's form (None offers
        none); `extra` (documents, ...) is passed to the template."""
        turns = [normalize_message(message) for message in messages]
        if self.supports_tools:
            turns = for_tool_template(turns)
            if tools:
                extra["tools"] = list(tools)
        elif tools or has_tool_turns(turns):
            turns = in_hermes_form(turns, tools)
        try:
            return self._template.render(
                messages=turns,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(
                f"the model's chat template failed on these messages: {exc}", param="messages"
            ) from exc


def normalize_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """Join OpenAI-style content parts ([{"type": "text", "text": ...}]) into one string.

    Most templates concatenate `message['content']` as a string; text parts are joined with
    newlines, as separate paragraphs. Non-text parts cannot reach a text-only model.
    """
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    texts: list[str] = []
    for part in content:
        part_type = part.get("type") if isinstance(part, Mapping) else type(part).__name__
        if part_type != "text":
            raise InvalidRequestError(
                f"message content part of type {part_type!r} is not supported: this model takes text only "
                "(send parts of type 'text')",
                param="messages",
            )
        texts.append(str(part.get("text", "")))
    return {**message, "content": "\n".join(texts)}
