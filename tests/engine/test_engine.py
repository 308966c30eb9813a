"""The engine on the real default model: batching, chunking, preemption, prefix caching, sampling."""

import logging
import math
from collections import Counter

import pytest

from inferline import LLM, Priority, SamplingParams
from inferline.config import EngineConfig
from inferline.engine.core import EngineCore
from inferline.engine.model_loader import LoadedModel
from inferline.errors import InvalidRequestError
from inferline.types import Request

PROMPTS = [
    "Hello",
    "Write a short poem about the autumn wind and the falling leaves of the old oak tree.",
    "1, 2, 3, 4,",
    "Explain what a hash table is. " * 12,
    "The recipe for pancakes needs flour, eggs,",
    "Translate to French: good morning",
]
GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


def greedy_one_at_a_time(default_model: LoadedModel) -> list[list[int]]:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    return [llm.generate(p, GREEDY)[0].outputs[0].token_ids for p in PROMPTS]


@pytest.fixture(scope="module")
def reference_outputs(default_model: LoadedModel) -> list[list[int]]:
    return greedy_one_at_a_time(default_model)


def run_all(core: EngineCore, requests: list[Request]) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    for request in requests:
        core.add_request(request)
    while core.has_unfinished():
        for delta in core.step():
            tokens[delta.request_id] += delta.token_ids
    return tokens


def test_batched_chunked_and_preempted_outputs_equal_one_at_a_time(
    default_model: LoadedModel, reference_outputs: list[list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferline.engine.scheduler")
    tokenizer = default_model.tokenizer
    # 48 KV blocks of 4 tokens and a 32-token step budget: prompts are chunked and sequences preempted.
    config = EngineConfig(
        block_size=4, max_num_batched_tokens=32, kv_cache_bytes=48 * 4 * 46080, max_num_seqs=8
    )
    core = EngineCore(config, default_model)
    requests = [Request(f"r{i}", tokenizer.encode(p), GREEDY) for i, p in enumerate(PROMPTS)]
    tokens = run_all(core, requests)
    assert [tokens[f"r{i}"] for i in range(len(PROMPTS))] == reference_outputs
    stats = core.stats()
    assert stats.num_preemptions > 0, "the tiny pool should have forced preemption"
    preempted = [r.getMessage() for r in caplog.records if "preempted" in r.getMessage()]
    assert len(preempted) == stats.num_preemptions
    assert all(message.startswith("preempted r") for message in preempted), preempted[:2]
    assert stats.kv_num_free_blocks == stats.kv_num_blocks, "blocks leaked"


def test_prefix_cache_hits_are_counted_and_change_nothing(default_model: LoadedModel) -> None:
    system = "You are a careful assistant who answers in one sentence. " * 4
    questions = ["What is rain?", "What is snow?", "What is hail?"]
    prompts = [system + q for q in questions]
    cached = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    uncached = LLM(loaded=default_model, kv_cache_bytes=64 << 20, enable_prefix_caching=False)
    with_cache = [cached.generate(p, GREEDY)[0] for p in prompts]
    without = [o.outputs[0].token_ids for o in uncached.generate(prompts, GREEDY)]
    assert [o.outputs[0].token_ids for o in with_cache] == without
    stats = cached.engine.stats()
    assert stats.prefix_hit_tokens >= 2 * 32
    assert with_cache[1].usage is not None
    assert with_cache[1].usage.cached_prompt_tokens >= 32
    assert stats.kv_num_free_blocks == stats.kv_num_blocks
    assert uncached.engine.stats().prefix_hit_tokens == 0


def test_a_prompt_sent_again_computes_its_last_token_only_and_answers_the_same(
    default_model: LoadedModel,
) -> None:
    prompt = "Write one short sentence about the sea"
    longer = prompt + " and the sky at night:"
    prompt_ids = default_model.tokenizer.encode(prompt)
    assert default_model.tokenizer.encode(longer)[: len(prompt_ids)] == prompt_ids
    assert len(prompt_ids) % 16, "the prompt ends in a partial block"
    cached = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    first, again, extended = (cached.generate(p, GREEDY)[0] for p in (prompt, prompt, longer))
    assert again.usage is not None
    assert extended.usage is not None
    assert again.usage.cached_prompt_tokens == len(prompt_ids) - 1
    assert extended.usage.cached_prompt_tokens == len(prompt_ids)  # the partial block's KV was copied
    uncached = LLM(loaded=default_model, kv_cache_bytes=64 << 20, enable_prefix_caching=False)
    expected = [o.outputs[0].token_ids for o in uncached.generate([prompt, longer], GREEDY)]
    outputs = [o.outputs[0].token_ids for o in (first, again, extended)]
    assert outputs == [expected[0], expected[0], expected[1]]


def test_seeded_sampling_reproduces_whatever_the_batch(default_model: LoadedModel) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    alone = llm.generate("Tell me a story about a dragon", seeded)[0].outputs[0].token_ids
    noise = SamplingParams(max_tokens=16, temperature=1.2)
    batch = llm.generate(
        ["Tell me a story about a dragon", "Once there was", "What is 2+2?"], [seeded, noise, noise]
    )
    assert batch[0].outputs[0].token_ids == alone
    other_seed = llm.generate("Tell me a story about a dragon", SamplingParams(max_tokens=16, seed=99))
    assert other_seed[0].outputs[0].token_ids != alone


def test_n_completions_share_the_prompt_and_differ(default_model: LoadedModel) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    prompt = "Name a fruit that grows on trees in a warm country far away from here:" * 3
    out = llm.generate(prompt, SamplingParams(n=4, max_tokens=12, temperature=1.0, seed=7))[0]
    assert [o.index for o in out.outputs] == [0, 1, 2, 3]
    assert all(len(o.token_ids) == 12 for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    assert out.usage is not None
    assert out.usage.completion_tokens == 48
    # Completions 1..3 reused the prompt's KV that completion 0 computed: all but the last prompt token,
    # whose forward pass gives each completion its first logits (its block is copied, not recomputed).
    assert llm.engine.stats().prefix_hit_tokens == 3 * (len(out.prompt_token_ids) - 1)


def test_stop_strings_cut_exactly(default_model: LoadedModel) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    free = llm.generate("1, 2, 3, 4,", SamplingParams(max_tokens=20, temperature=0))[0].outputs[0].text
    assert " 7" in free
    cut = llm.generate("1, 2, 3, 4,", SamplingParams(max_tokens=20, temperature=0, stop=[" 7"]))[0].outputs[0]
    assert cut.text == free[: free.index(" 7")]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", " 7")


def test_logprobs_are_probabilities_with_ranked_alternatives(default_model: LoadedModel) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    out = llm.generate("The capital of France is", SamplingParams(max_tokens=5, temperature=0, logprobs=3))[0]
    logprobs = out.outputs[0].logprobs
    assert logprobs is not None
    assert len(logprobs) == 5
    for entry, token_id in zip(logprobs, out.outputs[0].token_ids, strict=True):
        assert entry.token_id == token_id
        assert entry.logprob <= 0
        assert len(entry.top) == 3
        assert entry.top[0].token_id == token_id  # greedy picks the most likely
        assert entry.top[0].logprob >= entry.top[1].logprob >= entry.top[2].logprob
        assert sum(math.exp(t.logprob) for t in entry.top) <= 1.0 + 1e-5


def test_streamed_text_never_contains_broken_utf8(default_model: LoadedModel) -> None:
    core = EngineCore(EngineConfig(kv_cache_bytes=64 << 20), default_model)
    tokenizer = default_model.tokenizer
    prompt = tokenizer.encode("Emoji party: 🎉🎉🎈🥳 and more emoji:")
    core.add_request(Request("u", prompt, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)))
    pieces, ids = [], []
    while core.has_unfinished():
        for delta in core.step():
            pieces.append(delta.text)
            ids += delta.token_ids
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids)


@pytest.mark.parametrize(
    ("field", "sampling", "prompt"),
    [
        ("prompt", SamplingParams(), []),
        ("prompt", SamplingParams(), list(range(1, 9000))),
        ("max_tokens", SamplingParams(max_tokens=0), None),
        ("temperature", SamplingParams(temperature=float("nan")), None),
        ("temperature", SamplingParams(temperature=-1.0), None),
        ("top_p", SamplingParams(top_p=0.0), None),
        ("top_p", SamplingParams(top_p=1.5), None),
    ],
)
def test_bad_input_names_the_field_and_others_keep_going(
    default_model: LoadedModel, field: str, sampling: SamplingParams, prompt: list[int] | None
) -> None:
    core = EngineCore(EngineConfig(kv_cache_bytes=64 << 20, max_model_len=2048), default_model)
    good = Request("good", default_model.tokenizer.encode("Hello there"), SamplingParams(max_tokens=6))
    core.add_request(good)
    core.step()
    bad = Request("bad", [1, 2, 3] if prompt is None else prompt, sampling)
    with pytest.raises(InvalidRequestError) as error:
        core.add_request(bad)
    assert error.value.param == field
    assert field in str(error.value)
    finished = []
    while core.has_unfinished():
        finished += [d for d in core.step() if d.finish_reason]
    assert [d.request_id for d in finished] == ["good"]
    assert finished[0].finish_reason == "length"


def test_abort_frees_blocks_within_one_step(default_model: LoadedModel) -> None:
    core = EngineCore(EngineConfig(kv_cache_bytes=64 << 20), default_model)
    tokenizer = default_model.tokenizer
    core.add_request(Request("a", tokenizer.encode("Count to one hundred:"), SamplingParams(max_tokens=100)))
    core.add_request(Request("b", tokenizer.encode("Say hi"), SamplingParams(max_tokens=3, ignore_eos=True)))
    core.step()
    core.step()
    deltas = core.abort("a")
    assert [d.finish_reason for d in deltas] == ["abort"]
    while core.has_unfinished():
        core.step()
    stats = core.stats()
    assert stats.kv_num_free_blocks == stats.kv_num_blocks


def test_interactive_request_jumps_a_batch_flood(default_model: LoadedModel) -> None:
    core = EngineCore(EngineConfig(kv_cache_bytes=64 << 20, max_num_seqs=4), default_model)
    tokenizer = default_model.tokenizer
    flood = SamplingParams(max_tokens=64, ignore_eos=True)
    for i in range(12):
        core.add_request(
            Request(f"batch{i}", tokenizer.encode(f"Batch job {i}: summarise"), flood, Priority.BATCH, "bulk")
        )
    for _ in range(3):
        core.step()
    core.add_request(
        Request(
            "urgent",
            tokenizer.encode("Is this fraud?"),
            SamplingParams(max_tokens=2),
            Priority.INTERACTIVE,
            "shop",
        )
    )
    steps_to_first_token = next(
        (steps for steps in range(1, 4) if any(d.request_id == "urgent" for d in core.step())), None
    )
    assert steps_to_first_token == 1, "the interactive request should get its first token in the next step"
    assert core.stats().num_preemptions >= 1


def test_two_tenants_flooding_one_class_get_equal_shares(default_model: LoadedModel) -> None:
    core = EngineCore(EngineConfig(kv_cache_bytes=64 << 20, max_num_seqs=4), default_model)
    tokenizer = default_model.tokenizer
    # "a" floods first, with requests twice as long as "b"'s.
    for i in range(12):
        prompt = tokenizer.encode(f"Report {i} from tenant a:")
        core.add_request(
            Request(f"a{i}", prompt, SamplingParams(max_tokens=24, ignore_eos=True), Priority.BATCH, "a")
        )
    for i in range(12):
        prompt = tokenizer.encode(f"Report {i} from tenant b:")
        core.add_request(
            Request(f"b{i}", prompt, SamplingParams(max_tokens=12, ignore_eos=True), Priority.BATCH, "b")
        )
    tokens: Counter[str] = Counter()
    for _ in range(50):
        for delta in core.step():
            tokens[delta.request_id[0]] += len(delta.token_ids)
    fair_share = (tokens["a"] + tokens["b"]) / 2
    assert abs(tokens["a"] - fair_share) <= 0.2 * fair_share, tokens


def test_chat_hands_each_delta_to_on_delta_as_it_comes(default_model: LoadedModel) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    conversations = [[{"role": "user", "content": "What is rain?"}], [{"role": "user", "content": "Hi"}]]
    seen: list[tuple[str, str]] = []
    outputs = llm.chat(
        conversations, GREEDY, on_delta=lambda delta: seen.append((delta.request_id, delta.text))
    )
    for output in outputs:
        pieces = [text for request_id, text in seen if request_id == output.request_id]
        assert len(pieces) > 1  # streamed, not handed over at the end
        assert "".join(pieces) == output.outputs[0].text
