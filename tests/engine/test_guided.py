"""Guided decoding on the real default model: outputs follow their constraint, unconstrained neighbours
in the batch are untouched, speculative verification honours the masks, bad constraints are refused."""

import json
import re

import jsonschema
import pytest
import torch

from inferline.config import EngineConfig
from inferline.engine.core import EngineCore
from inferline.engine.guided.grammar import grammar_of
from inferline.engine.guided.masks import RowMasks, apply_row_masks
from inferline.engine.model_loader import LoadedModel
from inferline.errors import InvalidRequestError
from inferline.types import Request, SamplingParams, StructuredOutput

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
PHONE = r"[0-9]{3}-[0-9]{4}"  # \d would take any Unicode digit (Rust regex syntax)
NGRAM = {"method": "ngram", "num_speculative_tokens": 4}


def chat(model: LoadedModel, text: str) -> list[int]:
    return model.tokenizer.encode_chat([{"role": "user", "content": text}])


def greedy(structured: StructuredOutput | None, max_tokens: int = 40) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, structured=structured)


def run(core: EngineCore, requests: list[Request]) -> dict[tuple[str, int], tuple[str, list[int], str]]:
    """(request id, index) -> (text, token ids, finish reason)."""
    out: dict[tuple[str, int], tuple[str, list[int], str]] = {}
    for request in requests:
        core.add_request(request)
    while core.has_unfinished():
        for d in core.step():
            text, ids, reason = out.get((d.request_id, d.index), ("", [], ""))
            out[d.request_id, d.index] = (text + d.text, ids + d.token_ids, d.finish_reason or reason)
    return out


def schema_request(model: LoadedModel, request_id: str, params: SamplingParams) -> Request:
    # The example gives n-gram speculation drafts, some of which the grammar allows.
    example = '{"name": "Ann", "age": 31, "role": "user"} {"name": "Bob", "age": 40, "role": "user"}'
    return Request(request_id, chat(model, f"Users so far: {example}. Add one more user as JSON."), params)


@pytest.fixture(scope="module")
def batch(default_model: LoadedModel) -> dict[tuple[str, int], tuple[str, list[int], str]]:
    """One batch: schema (greedy, and n=2 sampled), regex, choice and an unconstrained request; small
    blocks and a small pool, so prompts are chunked and sequences preempted."""
    config = EngineConfig(block_size=4, max_num_batched_tokens=32, kv_cache_bytes=40 * 4 * 46080)
    core = EngineCore(config, default_model)
    person = StructuredOutput("json_schema", json.dumps(PERSON))
    sampled = SamplingParams(n=2, max_tokens=40, temperature=1.0, seed=7, structured=person)
    out = run(
        core,
        [
            schema_request(default_model, "schema", greedy(person)),
            schema_request(default_model, "sampled", sampled),
            Request(
                "phone",
                chat(default_model, "What is the office phone number?"),
                greedy(StructuredOutput("regex", PHONE)),
            ),
            Request(
                "choice",
                chat(default_model, "Is the sky green? Answer yes or no."),
                greedy(StructuredOutput("choice", json.dumps(["yes", "no"]))),
            ),
            Request("free", chat(default_model, "Tell me about the sea."), greedy(None, 24)),
        ],
    )
    assert core.stats().num_preemptions > 0
    assert core.guided.num_active == 0  # every finished sequence let go of its matcher
    return out


def test_constrained_greedy_and_sampled_outputs_follow_their_constraint(
    batch: dict[tuple[str, int], tuple[str, list[int], str]],
) -> None:
    for key in [("schema", 0), ("sampled", 0), ("sampled", 1)]:
        text, _, reason = batch[key]
        assert reason == "stop", key  # the grammar completed and only then could the model end
        jsonschema.validate(json.loads(text), PERSON)
    assert re.fullmatch(PHONE, batch["phone", 0][0])
    assert batch["choice", 0][0] in {"yes", "no"}


def test_an_unconstrained_request_decodes_as_if_alone(
    default_model: LoadedModel, batch: dict[tuple[str, int], tuple[str, list[int], str]]
) -> None:
    alone = run(
        EngineCore(EngineConfig(kv_cache_bytes=16 << 20), default_model),
        [Request("free", chat(default_model, "Tell me about the sea."), greedy(None, 24))],
    )
    assert batch["free", 0][1] == alone["free", 0][1]


def test_speculative_verification_rejects_drafts_the_grammar_forbids(
    default_model: LoadedModel, batch: dict[tuple[str, int], tuple[str, list[int], str]]
) -> None:
    person = StructuredOutput("json_schema", json.dumps(PERSON))
    # The prompt repeats words, so n-gram drafts are plenty, and none of them is a phone number.
    words = chat(default_model, "red green blue, red green blue, red green blue, red green blue")
    core = EngineCore(EngineConfig(kv_cache_bytes=16 << 20, speculative=NGRAM), default_model)
    spec = run(
        core,
        [
            schema_request(default_model, "schema", greedy(person)),
            Request("phone", words, greedy(StructuredOutput("regex", PHONE), 12)),
        ],
    )
    assert spec["schema", 0][1] == batch["schema", 0][1]  # exact: greedy output is plain decoding's
    assert re.fullmatch(PHONE, spec["phone", 0][0])
    stats = core.stats()
    assert stats.spec_drafted_tokens > stats.spec_accepted_tokens


@pytest.fixture(scope="module")
def small_core(default_model: LoadedModel) -> EngineCore:
    return EngineCore(EngineConfig(kv_cache_bytes=4 << 20), default_model)


@pytest.mark.parametrize(
    ("structured", "problem"),
    [
        (StructuredOutput("json_schema", "{not json"), "not valid JSON"),
        (StructuredOutput("json_schema", '{"type": "strin"}'), "strin"),
        (StructuredOutput("json_schema", '{"if": {"required": ["a"]}, "then": {"required": ["b"]}}'), "if"),
        (StructuredOutput("json_schema", '{"$ref": "#/$defs/missing"}'), "missing"),
        (StructuredOutput("regex", "a(b"), "unclosed group"),
        (StructuredOutput("choice", '["yes", 3]'), "non-empty list"),
        (StructuredOutput("grammar", "start: undefined_rule"), "undefined_rule"),
    ],
)
def test_bad_constraints_are_refused_before_queueing(
    small_core: EngineCore, structured: StructuredOutput, problem: str
) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(problem)) as caught:
        grammar_of(structured, "response_format")
    assert caught.value.param == "response_format"
    with pytest.raises(InvalidRequestError, match=re.escape(problem)) as caught:
        small_core.add_request(Request("bad", [1, 2, 3], greedy(structured)))
    assert caught.value.param == "structured"
    assert not small_core.has_unfinished()


def test_grammars_accept_lark_and_gbnf() -> None:
    grammar_of(StructuredOutput("grammar", 'start: "yes" | "no"'))
    grammar_of(StructuredOutput("grammar", 'root ::= "yes" | "no"'))


def test_masks_touch_only_the_constrained_rows() -> None:
    logits = torch.zeros(3, 70)
    bitmask = torch.zeros(1, 3, dtype=torch.int32)
    bitmask[0, 1] = 1 << 3  # token 35 alone
    apply_row_masks(logits, RowMasks(torch.tensor([1]), bitmask))
    assert torch.equal(logits[[0, 2]], torch.zeros(2, 70))
    assert logits[1].isfinite().nonzero().flatten().tolist() == [35]
