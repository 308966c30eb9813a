"""A StructuredOutput as an llguidance grammar, checked before a request is queued, and the compiled
matchers cached per constraint.

Design note: llguidance was chosen by measurement on SmolLM2-135M's 49,152-token vocabulary (README,
"Structured outputs"): compiling a schema costs ~1-6 ms because token masks are computed lazily, a mask
costs ~16 us per token, and the wheel has no dependencies (xgrammar brings triton and transformers;
outlines-core took 50-580 ms per schema). Checking a grammar needs no tokenizer, so the server checks a
request's constraint with the name of the field it came in, before any engine sees it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from functools import cached_property
from typing import TYPE_CHECKING

import llguidance
from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark

from inferline.errors import InvalidRequestError
from inferline.models.tokenizer import Tokenizer
from inferline.types import StructuredOutput

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # declared in the type stub only

JSON_OBJECT_SCHEMA = '{"type": "object"}'
"""json_object: any JSON object."""
JSON_OPTIONS: JsonCompileOptions = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,20}"}
"""At most 20 whitespace characters between two JSON tokens (a newline and indentation): unbounded, a
small model can fall into emitting newlines until max_tokens. A schema's "x-guidance" key may change it."""


def grammar_of(structured: StructuredOutput, param: str = "structured") -> str:
    """The llguidance grammar for a constraint. Raises InvalidRequestError naming `param` when the spec
    does not parse, or uses a feature llguidance does not implement (e.g. JSON schema's if/then)."""
    try:
        grammar = _grammar_text(structured, param)
    except GbnfToLarkError as error:
        raise InvalidRequestError(f"{param}: the grammar does not parse: {error}", param) from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        what = {"json_schema": "JSON schema", "regex": "regular expression"}.get(structured.kind, "grammar")
        raise InvalidRequestError(
            f"{param}: cannot constrain the output to this {what}: {messages[0].strip()}", param
        )
    return grammar


def _grammar_text(structured: StructuredOutput, param: str) -> str:
    kind, spec = structured.kind, structured.spec
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema(JSON_OBJECT_SCHEMA, defaults=JSON_OPTIONS)
    if kind == "json_schema":
        schema = _parse_json(spec, param, "the JSON schema")
        if not isinstance(schema, dict | bool):
            raise InvalidRequestError(f"{param}: a JSON schema must be an object; got {spec[:80]}", param)
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec)
    if kind == "choice":
        choices = _parse_json(spec, param, "the choice list")
        if not (isinstance(choices, list) and choices and all(isinstance(c, str) and c for c in choices)):
            raise InvalidRequestError(f"{param}: give a non-empty list of non-empty strings", param)
        # Lark string literals take JSON's escapes.
        alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
        return llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}")
    if kind == "grammar":
        if not spec.strip():
            raise InvalidRequestError(f"{param}: the grammar is empty", param)
        return llguidance.LLMatcher.grammar_from_lark(any_to_lark(spec))
    raise InvalidRequestError(
        f"{param}: kind must be json_schema, json_object, regex, choice or grammar; got {kind!r}", param
    )


def _parse_json(text: str, param: str, what: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"{param}: {what} is not valid JSON: {error}", param) from None


class GrammarCache:
    """Compiled matchers by constraint, least recently used dropped first; a sequence starts from a copy.

    Shared by the thread that admits requests and the engine thread, hence the lock. The tokenizer
    bridge is built on first use (~0.3 s for a 49k vocabulary), so engines that never see a constraint
    never pay for it.
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, max_entries: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        """The width of the model's logits, which may exceed the tokenizer's vocabulary."""
        self.max_entries = max_entries
        self._matchers: OrderedDict[StructuredOutput, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.num_compiled = 0

    @cached_property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        # Every end-of-sequence id is allowed once the grammar is complete.
        return llguidance.LLTokenizer(
            self.tokenizer.backend.to_str(),
            n_vocab=self.vocab_size,
            eos_token=self.tokenizer.eos_token_ids or None,
        )

    def matcher(self, structured: StructuredOutput) -> llguidance.LLMatcher:
        """A fresh matcher for the constraint, at its start; compiles on the first request for it."""
        with self._lock:
            compiled = self._matchers.get(structured)
            if compiled is not None:
                self._matchers.move_to_end(structured)
                return compiled.deep_copy()
            compiled = llguidance.LLMatcher(self.ll_tokenizer, grammar_of(structured), log_level=0)
            if compiled.is_error():
                raise InvalidRequestError(f"structured: {compiled.get_error()}", "structured")
            self.num_compiled += 1
            self._matchers[structured] = compiled
            if len(self._matchers) > self.max_entries:
                self._matchers.popitem(last=False)
            return compiled.deep_copy()
