"""Sampler behaviour on hand-built logits."""

from dataclasses import dataclass, field

import pytest
import torch

from inferline.engine.sampler import Sampler
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


def test_logprobs_report_the_raw_distribution(sampler: Sampler) -> None:
    row = Row(SamplingParams(temperature=0, logprobs=2))
    out = sampler(logits([0, 2.0, 1.0, 0, 0, 0, 0, 0]), [row])[0]
    expected = torch.log_softmax(torch.tensor([0, 2.0, 1.0, 0, 0, 0, 0, 0]), -1)
    assert out.token_id == 1
    assert out.logprob == pytest.approx(expected[1].item())
    assert out.top_token_ids == [1, 2]
    assert out.top_logprobs == pytest.approx([expected[1].item(), expected[2].item()])
