"""Speculative decoding: n-gram and draft-model proposals, exact verification, end to end.

The scheduler's side (lookahead, proposals in the output, accepted tokens) is in test_scheduler.py."""

import asyncio
import dataclasses

import pytest
import torch
from pydantic import ValidationError

from inferline import LLM, SamplingParams
from inferline.config import EngineConfig, SpeculativeConfig
from inferline.engine.async_engine import AsyncEngine
from inferline.engine.core import EngineCore
from inferline.engine.memory import plan_kv_pool
from inferline.engine.model_loader import LoadedModel
from inferline.engine.sampler import Sampler
from inferline.engine.scheduler import ScheduledChunk
from inferline.engine.speculative.draft_model import check_draft_vocab
from inferline.engine.speculative.ngram import NgramProposer
from inferline.engine.speculative.verify import verify_drafts
from inferline.errors import InvalidRequestError
from inferline.types import Request

EOS = 0
NGRAM = {"method": "ngram", "num_speculative_tokens": 4}
DRAFT = {"method": "draft", "draft_model": "default", "num_speculative_tokens": 3}
# Prompts whose continuation repeats text already in the sequence, so n-gram drafts get accepted.
REPETITIVE = [
    "red green blue yellow, red green blue yellow, red green blue yellow, red green blue",
    "Copy the line: the cat sat on the mat.\nCopy: the cat sat on the mat.\nCopy: the cat",
]
GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)


def generate(llm: LLM, prompts: list[str], params: SamplingParams) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def plain_greedy(default_model: LoadedModel) -> list[list[int]]:
    return generate(LLM(loaded=default_model, kv_cache_bytes=64 << 20), REPETITIVE, GREEDY)


# ---- n-gram lookup --------------------------------------------------------------------------


def test_ngram_lookup_takes_the_latest_longest_match() -> None:
    proposer = NgramProposer(min_n=2, max_n=3)
    # Last 3 tokens (1, 2, 3) occur at 0 and 5; the latest earlier one is followed by 7, 8.
    assert proposer.lookup([1, 2, 3, 4, 5, 1, 2, 3, 7, 8, 1, 2, 3], 4) == [7, 8, 1, 2]
    # No match of 3 tokens, but (5, 6) occurred: fall back to n = 2.
    assert proposer.lookup([5, 6, 9, 4, 5, 6], 2) == [9, 4]
    assert proposer.lookup([1, 2, 3, 4], 4) == []
    # A byte pattern straddling two tokens is not a token match.
    assert proposer.lookup([256, 0, 1, 1], 2) == []


# ---- greedy output is plain decoding's, token for token ---------------------------------------


def test_ngram_greedy_output_equals_plain_decoding(
    default_model: LoadedModel, plain_greedy: list[list[int]]
) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20, speculative=NGRAM)
    assert generate(llm, REPETITIVE, GREEDY) == plain_greedy
    stats = llm.engine.stats()
    assert stats.spec_accepted_tokens > 10
    assert 0 < stats.spec_acceptance_rate <= 1
    assert stats.spec_mean_accepted_length > 1.5
    assert stats.kv_num_free_blocks == stats.kv_num_blocks
    # A prompt that continues the first completion reuses its cached blocks, generated tokens included:
    # they hold verified KV only, so the continuation is plain decoding's.
    prompt = default_model.tokenizer.encode(REPETITIVE[0])
    continued = llm.generate(prompt + plain_greedy[0][:16], SamplingParams(max_tokens=4, temperature=0))[0]
    assert continued.outputs[0].token_ids == plain_greedy[0][16:20]
    assert continued.usage is not None
    assert continued.usage.cached_prompt_tokens >= 32


def test_draft_model_greedy_output_equals_plain_decoding(
    default_model: LoadedModel, plain_greedy: list[list[int]]
) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20, speculative=DRAFT)
    assert generate(llm, REPETITIVE[:1], GREEDY) == plain_greedy[:1]
    stats = llm.engine.stats()
    # The draft is the target model itself: it guesses (almost) every token right.
    assert stats.spec_acceptance_rate > 0.9
    assert stats.spec_mean_accepted_length > 3.5
    assert stats.kv_num_free_blocks == stats.kv_num_blocks


def test_ngram_under_preemption_and_chunking_keeps_the_output(
    default_model: LoadedModel, plain_greedy: list[list[int]]
) -> None:
    # 16 blocks of 4 tokens, a 16-token step budget: prompts are chunked and sequences preempted.
    config = EngineConfig(
        block_size=4, max_num_batched_tokens=16, kv_cache_bytes=16 * 4 * 46080, speculative=NGRAM
    )
    core = EngineCore(config, default_model)
    tokens: dict[str, list[int]] = {}
    for i, prompt in enumerate(REPETITIVE):
        core.add_request(Request(f"r{i}", default_model.tokenizer.encode(prompt), GREEDY))
        tokens[f"r{i}"] = []
    while core.has_unfinished():
        for delta in core.step():
            tokens[delta.request_id] += delta.token_ids
    assert list(tokens.values()) == plain_greedy
    stats = core.stats()
    assert stats.num_preemptions > 0
    assert stats.spec_accepted_tokens > 0
    assert stats.kv_num_free_blocks == stats.kv_num_blocks


def test_stops_land_inside_accepted_drafts_exactly_as_without(default_model: LoadedModel) -> None:
    plain = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    spec = LLM(loaded=default_model, kv_cache_bytes=64 << 20, speculative=NGRAM)
    free = plain.generate(REPETITIVE[0], GREEDY)[0].outputs[0]
    cases = [
        SamplingParams(max_tokens=11, temperature=0),
        SamplingParams(max_tokens=20, temperature=0, stop=[free.text[30:36]]),
        SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[free.token_ids[9]]),
    ]
    for params in cases:
        want, got = plain.generate(REPETITIVE[0], params)[0], spec.generate(REPETITIVE[0], params)[0]
        assert got.outputs[0].token_ids == want.outputs[0].token_ids, params
        assert got.outputs[0].text == want.outputs[0].text
        assert (got.outputs[0].finish_reason, got.outputs[0].stop_reason) == (
            want.outputs[0].finish_reason,
            want.outputs[0].stop_reason,
        )
        assert got.usage is not None
        assert want.usage is not None
        assert got.usage.completion_tokens == want.usage.completion_tokens
    assert spec.engine.stats().spec_accepted_tokens > 0


def test_streaming_through_the_async_engine_carries_several_tokens_per_delta(
    default_model: LoadedModel, plain_greedy: list[list[int]]
) -> None:
    engine = AsyncEngine(
        lambda: EngineCore(EngineConfig(kv_cache_bytes=64 << 20, speculative=NGRAM), default_model)
    )
    request = Request("s", default_model.tokenizer.encode(REPETITIVE[0]), GREEDY)

    async def stream() -> list[list[int]]:
        return [delta.token_ids async for delta in engine.generate(request)]

    try:
        deltas = asyncio.run(stream())
    finally:
        asyncio.run(engine.shutdown(drain_timeout_s=0))
    assert [t for ids in deltas for t in ids] == plain_greedy[0]
    assert max(len(ids) for ids in deltas) > 1


# ---- sampled requests ---------------------------------------------------------------------------


def test_seeded_sampling_is_the_same_with_ngram_speculation(default_model: LoadedModel) -> None:
    seeded = SamplingParams(max_tokens=16, temperature=0.7, seed=11, ignore_eos=True, logprobs=1)
    plain = LLM(loaded=default_model, kv_cache_bytes=64 << 20).generate(REPETITIVE[0], seeded)
    spec_llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20, speculative=NGRAM)
    spec = spec_llm.generate(REPETITIVE[0], seeded)
    assert [o.outputs[0].token_ids for o in spec] == [o.outputs[0].token_ids for o in plain]
    assert spec_llm.engine.stats().spec_accepted_tokens > 0
    logprobs = spec[0].outputs[0].logprobs
    assert logprobs is not None
    assert [lp.token_id for lp in logprobs] == spec[0].outputs[0].token_ids


def test_seeded_draft_model_sampling_reproduces_whatever_the_batch(default_model: LoadedModel) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20, speculative=DRAFT)
    seeded = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=5, ignore_eos=True)
    alone = llm.generate(REPETITIVE[1], seeded)[0].outputs[0].token_ids
    noise = SamplingParams(max_tokens=12, temperature=1.2, ignore_eos=True)
    batch = llm.generate([REPETITIVE[0], REPETITIVE[1]], [noise, seeded])
    assert batch[1].outputs[0].token_ids == alone
    assert len(alone) == 12
    assert llm.engine.stats().spec_accepted_tokens > 0


def fake_chunks(
    count: int, drafts: torch.Tensor, q: torch.Tensor | None, sampling: SamplingParams
) -> list[ScheduledChunk]:
    return [
        ScheduledChunk(
            seq_id=f"s{i}",
            token_ids=[1, *drafts[i].tolist()],
            start_position=3,
            block_ids=[0],
            sample=True,
            sampling=sampling,
            prompt_token_ids=[1, 2, 3],
            output_token_ids=[],
            seq_index=0,
            draft_token_ids=drafts[i].tolist(),
            draft_probs=None if q is None else q.expand(drafts.shape[1], -1),
        )
        for i in range(count)
    ]


def total_variation(tokens: list[int], p: torch.Tensor) -> float:
    freq = torch.bincount(torch.tensor(tokens), minlength=len(p)).float() / len(tokens)
    return 0.5 * float((freq - p).abs().sum())


@pytest.mark.parametrize("draft_kind", ["draft_model", "ngram"])
def test_rejection_sampling_follows_the_target_distribution(draft_kind: str) -> None:
    count, num_drafts = 12_000, 2
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    sampling = SamplingParams(temperature=0.8, top_k=4)
    # The target's distribution after temperature and top-k: the last two tokens can never appear.
    p = torch.softmax(torch.where(torch.arange(6) < 4, logits / 0.8, float("-inf")), dim=-1)
    q = torch.tensor([0.05, 0.1, 0.2, 0.25, 0.2, 0.2])  # the draft favours what the target does not
    generator = torch.Generator().manual_seed(3)
    if draft_kind == "draft_model":
        drafts = torch.multinomial(q, count * num_drafts, replacement=True, generator=generator)
        chunks = fake_chunks(count, drafts.view(count, num_drafts), q, sampling)
    else:  # an n-gram guess is certain: q is one-hot
        chunks = fake_chunks(count, torch.full((count, num_drafts), 3), None, sampling)
    out = verify_drafts(Sampler(0, torch.device("cpu")), logits.expand(count * 3, -1), chunks)

    first = [tokens[0].token_id for tokens in out]
    second = [tokens[1].token_id for tokens in out if len(tokens) > 1]
    assert all(1 <= len(tokens) <= num_drafts + 1 for tokens in out)
    assert total_variation(first, p) < 0.02
    assert total_variation(second, p) < 0.03
    accepted = sum(
        out[i][0].token_id == chunks[i].draft_token_ids[0] and len(out[i]) > 1 for i in range(count)
    )
    expected = float(torch.minimum(p, q).sum()) if draft_kind == "draft_model" else float(p[3])
    assert abs(accepted / count - expected) < 0.02


def test_greedy_verification_accepts_while_drafts_equal_the_argmax() -> None:
    logits = torch.tensor([[0, 5.0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]])
    greedy = SamplingParams(temperature=0)
    hit = fake_chunks(1, torch.tensor([[1, 2]]), None, greedy)
    miss = fake_chunks(1, torch.tensor([[1, 0]]), None, greedy)
    sampler = Sampler(0, torch.device("cpu"))
    assert [t.token_id for t in verify_drafts(sampler, logits, hit)[0]] == [1, 2, 3]
    assert [t.token_id for t in verify_drafts(sampler, logits, miss)[0]] == [1, 2]


# ---- configuration ------------------------------------------------------------------------------


def test_bad_speculative_configs_say_how_to_fix_them() -> None:
    with pytest.raises(ValidationError, match="prompt_lookup_min"):
        SpeculativeConfig(method="ngram", prompt_lookup_min=5, prompt_lookup_max=3)
    with pytest.raises(ValidationError, match="needs draft_model"):
        SpeculativeConfig(method="draft")
    with pytest.raises(ValidationError, match="num_speculative_tokens"):
        SpeculativeConfig(method="ngram", num_speculative_tokens=17)


def test_draft_with_another_vocabulary_is_refused(default_model: LoadedModel) -> None:
    other = dataclasses.replace(default_model.config, vocab_size=32000)
    with pytest.raises(InvalidRequestError, match="32000.*49152") as error:
        check_draft_vocab(default_model.config, other, "tiny-llama")
    assert error.value.param == "speculative.draft_model"


def test_kv_plan_counts_the_draft_cache(default_model: LoadedModel) -> None:
    config = EngineConfig(kv_cache_bytes=64 << 20)
    cpu = torch.device("cpu")
    alone = plan_kv_pool(config, default_model.config, torch.float32, cpu)
    with_draft = plan_kv_pool(config, default_model.config, torch.float32, cpu, default_model.config)
    assert with_draft.bytes_per_token == 2 * alone.bytes_per_token
    assert with_draft.total_bytes <= 64 << 20
    assert with_draft.num_blocks == alone.num_blocks // 2
