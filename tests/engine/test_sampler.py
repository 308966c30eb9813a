"""Sampler behaviour on hand-built logits."""

from dataclasses import dataclass, field

import pytest
import torch

from inferline.engine.sampler import Sampler, draw
from inferline.types import SamplingParams

VOCAB = 8


@dataclass
class Row:
    sampling: SamplingParams
    prompt_token_ids: list[int] = field(default_factory=lambda: [1])
    output_token_ids: list[int] = field(default_factory=list)
    seq_index: int = 0


def logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


@pytest.fixture
def sampler() -> Sampler:
    return Sampler(default_seed=0, device=torch.device("cpu"))


def sample_many(
    sampler: Sampler, row_logits: list[float], params: SamplingParams, draws: int = 400
) -> set[int]:
    batch = logits(*[row_logits] * draws)
    return {s.token_id for s in sampler(batch, [Row(params) for _ in range(draws)])}


def test_greedy_is_argmax(sampler: Sampler) -> None:
    out = sampler(
        logits([0, 1, 5, 2, 0, 0, 0, 0], [9, 1, 5, 2, 0, 0, 0, 0]), [Row(SamplingParams(temperature=0))] * 2
    )
    assert [s.token_id for s in out] == [2, 0]


def test_top_k_keeps_only_the_k_best(sampler: Sampler) -> None:
    drawn = sample_many(sampler, [3, 2.9, 2.8, 0, 0, 0, 0, 0], SamplingParams(temperature=1.0, top_k=2))
    assert drawn == {0, 1}


def test_top_p_keeps_the_nucleus(sampler: Sampler) -> None:
    # Probabilities ~ [0.5, 0.3, 0.2, ~0...]: top_p 0.7 keeps the first two tokens.
    probs = torch.tensor([0.5, 0.3, 0.2, 1e-9, 1e-9, 1e-9, 1e-9, 1e-9])
    drawn = sample_many(sampler, probs.log().tolist(), SamplingParams(temperature=1.0, top_p=0.7))
    assert drawn == {0, 1}


def test_min_p_drops_unlikely_tokens(sampler: Sampler) -> None:
    probs = torch.tensor([0.4, 0.35, 0.2, 0.05, 1e-9, 1e-9, 1e-9, 1e-9])
    drawn = sample_many(sampler, probs.log().tolist(), SamplingParams(temperature=1.0, min_p=0.3))
    assert drawn == {0, 1, 2}


def test_unrestricted_sampling_reaches_the_tail(sampler: Sampler) -> None:
    drawn = sample_many(sampler, [1.0] * VOCAB, SamplingParams(temperature=1.0), draws=600)
    assert drawn == set(range(VOCAB))


def test_penalties_move_the_argmax_away_from_repeats(sampler: Sampler) -> None:
    base = [0, 3.0, 2.5, 0, 0, 0, 0, 0]
    repeated = Row(SamplingParams(temperature=0, frequency_penalty=1.0), output_token_ids=[1])
    assert sampler(logits(base), [repeated])[0].token_id == 2
    presence = Row(SamplingParams(temperature=0, presence_penalty=0.6), output_token_ids=[1, 1, 1])
    assert sampler(logits(base), [presence])[0].token_id == 2
    # The repetition penalty (HF semantics) also counts prompt tokens: 3.0 / 1.5 = 2.0 < 2.5.
    in_prompt = Row(SamplingParams(temperature=0, repetition_penalty=1.5), prompt_token_ids=[1])
    assert sampler(logits(base), [in_prompt])[0].token_id == 2
    untouched = Row(SamplingParams(temperature=0))
    assert sampler(logits(base), [untouched])[0].token_id == 1


def test_seeded_rows_ignore_their_neighbours(sampler: Sampler) -> None:
    seeded = Row(SamplingParams(temperature=1.0, seed=42), output_token_ids=[3, 4])
    flat = [1.0] * VOCAB
    alone = sampler(logits(flat), [seeded])[0].token_id
    for other_seed in range(5):
        crowd = [Row(SamplingParams(temperature=1.0, seed=other_seed)), seeded, Row(SamplingParams())]
        assert sampler(logits(flat, flat, flat), crowd)[1].token_id == alone


def test_a_seeded_request_varies_by_token_index_but_not_by_sampler_or_batch_order() -> None:
    flat = [1.0] * VOCAB
    rows = [Row(SamplingParams(temperature=1.0, seed=7), output_token_ids=[0] * i) for i in range(64)]
    first = [s.token_id for s in Sampler(0, torch.device("cpu"))(logits(*[flat] * 64), rows)]
    backwards = Sampler(99, torch.device("cpu"))(logits(*[flat] * 64), rows[::-1])
    assert [s.token_id for s in backwards][::-1] == first
    assert len(set(first)) > VOCAB // 2  # each token index has its own draw


def expected_distribution(row_logits: list[float], params: SamplingParams) -> torch.Tensor:
    """The distribution the sampler should draw from, computed here independently of it."""
    p = torch.softmax(torch.tensor(row_logits, dtype=torch.float64) / params.temperature, dim=-1)
    if params.top_k is not None:
        p = torch.where(p >= p.topk(params.top_k).values[-1], p, 0.0)
    p = torch.where(p >= params.min_p * p.max(), p, 0.0)
    return p / p.sum()


def chi_square_below_critical(counts: torch.Tensor, p: torch.Tensor) -> bool:
    """Whether draws with these counts fit p, at the 99.9th percentile (3 to 7 degrees of freedom)."""
    assert counts[p == 0].sum() == 0
    expected = p[p > 0] * counts.sum()
    chi_square = float(((counts[p > 0] - expected) ** 2 / expected).sum())
    return chi_square < {3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}[int((p > 0).sum()) - 1]


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, top_k=6, min_p=0.1)],
    ids=["temperature", "top_k_and_min_p"],
)
def test_sampled_tokens_follow_the_distribution(sampler: Sampler, params: SamplingParams) -> None:
    row_logits = [2.0, 1.6, 1.1, 0.7, 0.2, -0.4, -1.0, 0.9]
    draws = 20_000
    counts = torch.zeros(VOCAB, dtype=torch.float64)
    for s in sampler(logits(*[row_logits] * draws), [Row(params)] * draws):
        counts[s.token_id] += 1
    assert chi_square_below_critical(counts, expected_distribution(row_logits, params))


def test_draws_across_a_large_vocabulary_follow_the_weights() -> None:
    # Mass in several of the search's blocks, at their edges, in a vocabulary that is no whole number of them.
    p = torch.zeros(1029, dtype=torch.float64)
    p[[0, 255, 256, 600, 767, 1028]] = torch.tensor([0.1, 0.25, 0.05, 0.3, 0.2, 0.1], dtype=torch.float64)
    draws = 20_000
    uniforms = torch.rand(draws, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tokens = draw(p.float().expand(draws, -1), uniforms)
    assert chi_square_below_critical(torch.bincount(tokens, minlength=len(p)).double(), p)


def test_greedy_rows_take_the_argmax_beside_sampled_rows(sampler: Sampler) -> None:
    close = [0, 1.0, 1.1, 0.9, 0, 0, 0, 0]
    rows = [Row(SamplingParams(temperature=0)), Row(SamplingParams(temperature=1.0))] * 200
    out = sampler(logits(*[close] * len(rows)), rows)
    assert {s.token_id for s in out[0::2]} == {2}
    assert len({s.token_id for s in out[1::2]}) == VOCAB


def test_logprobs_report_the_raw_distribution(sampler: Sampler) -> None:
    row = Row(SamplingParams(temperature=0, logprobs=2))
    out = sampler(logits([0, 2.0, 1.0, 0, 0, 0, 0, 0]), [row])[0]
    expected = torch.log_softmax(torch.tensor([0, 2.0, 1.0, 0, 0, 0, 0, 0]), -1)
    assert out.token_id == 1
    assert out.logprob == pytest.approx(expected[1].item())
    assert out.top_token_ids == [1, 2]
    assert out.top_logprobs == pytest.approx([expected[1].item(), expected[2].item()])
