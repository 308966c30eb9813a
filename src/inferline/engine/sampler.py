"""Picks each sequence's next token from its logits, by the sequence's own sampling parameters.

The batch is processed as a whole; the costly pieces (penalty counts, sorting for top-p/top-k, min-p)
run only when some row asks for them, so a greedy batch costs one argmax and a temperature-1 batch
(OpenAI's default) one softmax and one pass of block sums. Sampling is by inverse CDF: one U(0, 1)
draw u per row, and the token is the first whose cumulative probability exceeds u. That draws exactly
from the row's distribution with one random number per row; the exponential race it replaced (argmax
of p / E, E ~ Exp(1)) drew one per vocabulary entry, 16 x 49152 per decode step, which on a CPU cost
more than the rest of sampling together (~18 of a ~75 ms step). Each seeded row takes its u from its
own generator, so a seeded request samples the same tokens whatever else is in the batch; the
generator's seed is derived from (seed, completion index, token index), so preemption and recompute
do not change a seeded request's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from inferline.engine.guided.masks import RowMasks, apply_row_masks
from inferline.types import SamplingParams


class SampleRequest(Protocol):
    """What the sampler needs to know about one row of logits (a ScheduledChunk is one)."""

    sampling: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    seq_index: int


@dataclass
class SampledToken:
    token_id: int
    logprob: float | None = None
    """Log-probability of the token under the model's raw distribution, when logprobs were asked for."""
    top_token_ids: list[int] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)


_BLOCK = 256
"""Tokens per block of the two-level search in `draw`."""


def draw(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """[B] for each row of `weights` ([B, V], >= 0, any positive sum) the index i with probability
    weights[i] / sum(weights), by its draw u in `uniforms` ([B]): the first i whose cumulative weight
    exceeds u * sum. A zero weight is never drawn (its cumulative weight equals the one before it).

    The search runs in two levels, over sums of blocks of the row and then within the one block the
    draw falls in, so it takes one cheap pass over the row instead of a running sum across all of it
    (a chain of V dependent additions, and a V-long float64 buffer). Sums are float64: in float32 their
    rounding (~6e-8 near 1) would move mass between tokens."""
    num_rows, vocab = weights.shape
    if vocab <= _BLOCK:  # one block: the search within it alone
        cdf = weights.to(torch.float64).cumsum(dim=-1)
        return _first_above(cdf, uniforms.unsqueeze(1) * cdf[:, -1:]).squeeze(1)
    if vocab % _BLOCK:
        weights = torch.nn.functional.pad(weights, (0, _BLOCK - vocab % _BLOCK))
    blocks = weights.view(num_rows, -1, _BLOCK)
    num_blocks = blocks.shape[1]
    # [B, 1 + blocks]: the weight before each block, from 0, and the total last.
    block_cdf = torch.nn.functional.pad(blocks.sum(dim=-1, dtype=torch.float64).cumsum(dim=-1), (1, 0))
    target = _below_total(uniforms.unsqueeze(1) * block_cdf[:, -1:], block_cdf)
    block = (torch.searchsorted(block_cdf, target, right=True) - 1).clamp_(0, num_blocks - 1)
    left = target - block_cdf.gather(1, block)
    chosen = blocks.gather(1, block.unsqueeze(2).expand(-1, -1, _BLOCK)).squeeze(1)  # [B, BLOCK]
    token = _first_above(chosen.to(torch.float64).cumsum(dim=-1), left)
    return (block * _BLOCK + token).squeeze(1).clamp_(max=vocab - 1)


def _below_total(target: torch.Tensor, cdf: torch.Tensor) -> torch.Tensor:
    """`target` ([B, 1]) held just below the total of `cdf` ([B, N]): u < 1, yet u * total can round
    up to the total, past every entry."""
    total = cdf[:, -1:]
    return torch.minimum(target, total.nextafter(torch.zeros_like(total)))


def _first_above(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, 1] the first index whose cumulative weight in `cdf` ([B, N]) exceeds `target` ([B, 1]). A row
    with no mass (NaN logits) finds none; the clamp keeps it inside the row."""
    index = torch.searchsorted(cdf, _below_total(target, cdf), right=True)
    return index.clamp_(max=cdf.shape[-1] - 1)


def _draw_seed(seed: int, seq_index: int, token_index: int, salt: str | None) -> int:
    key = (seed, seq_index, token_index) if salt is None else (seed, seq_index, token_index, salt)
    return hash(key) & 0x7FFF_FFFF_FFFF_FFFF


class Sampler:
    """Sampling plus the pieces speculative verification reuses: the request's distribution and the
    seeded draws, so a verified token is drawn exactly as the plain path would draw it."""

    def __init__(self, default_seed: int, device: torch.device) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(default_seed)
        self.row_generator = torch.Generator(device=device)

    def __call__(
        self, logits: torch.Tensor, rows: Sequence[SampleRequest], masks: RowMasks | None = None
    ) -> list[SampledToken]:
        # logits: [B, V] float32
        raw_logprobs = self.raw_logprobs(logits, rows)
        logits = self.constrain(self.apply_penalties(logits, rows), masks)
        if all(r.sampling.greedy for r in rows):
            token_ids = logits.argmax(dim=-1)
        else:
            token_ids = self.pick(logits, self.probabilities(logits, rows), self.uniform(rows), rows)
        return self.results(token_ids, rows, raw_logprobs)

    @staticmethod
    def raw_logprobs(logits: torch.Tensor, rows: Sequence[SampleRequest]) -> torch.Tensor | None:
        """The model's own log-distribution, when some row asks for logprobs."""
        if any(r.sampling.logprobs is not None for r in rows):
            return torch.log_softmax(logits, dim=-1)
        return None

    def results(
        self, token_ids: torch.Tensor, rows: Sequence[SampleRequest], raw_logprobs: torch.Tensor | None
    ) -> list[SampledToken]:
        results = [SampledToken(t) for t in token_ids.tolist()]
        if raw_logprobs is not None:
            self._fill_logprobs(raw_logprobs, token_ids, [r.sampling for r in rows], results)
        return results

    @staticmethod
    def constrain(logits: torch.Tensor, masks: RowMasks | None) -> torch.Tensor:
        """Forbid the tokens a constrained row's grammar does not allow (after penalties, so a penalty
        never revives one); logprobs stay the model's own."""
        return logits if masks is None else apply_row_masks(logits, masks)

    def apply_penalties(self, logits: torch.Tensor, rows: Sequence[SampleRequest]) -> torch.Tensor:
        params = [r.sampling for r in rows]
        if all(
            p.presence_penalty == 0 and p.frequency_penalty == 0 and p.repetition_penalty == 1 for p in params
        ):
            return logits
        batch, vocab = logits.shape
        counts = torch.zeros(batch, vocab, device=logits.device)
        in_prompt = torch.zeros(batch, vocab, dtype=torch.bool, device=logits.device)
        for i, row in enumerate(rows):
            if row.output_token_ids:
                ids = torch.tensor(row.output_token_ids, device=logits.device)
                counts[i].index_add_(0, ids, torch.ones(len(ids), device=logits.device))
            if row.sampling.repetition_penalty != 1:
                in_prompt[i, torch.tensor(row.prompt_token_ids, device=logits.device)] = True

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=logits.device).unsqueeze(1)

        frequency = column([p.frequency_penalty for p in params])
        presence = column([p.presence_penalty for p in params])
        repetition = column([p.repetition_penalty for p in params])
        seen = in_prompt | (counts > 0)
        penalized = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits = torch.where(seen, penalized, logits)
        return logits - frequency * counts - presence * (counts > 0)

    def probabilities(self, logits: torch.Tensor, rows: Sequence[SampleRequest]) -> torch.Tensor:
        """[B, V] the normalized distribution each row samples from (penalized logits in): temperature,
        top-k, top-p, min-p. Greedy rows get their temperature-1 distribution; they take the argmax."""
        params = [r.sampling for r in rows]
        temperatures = [p.temperature if p.temperature > 0 else 1.0 for p in params]
        if any(t != 1.0 for t in temperatures):
            logits = logits / torch.tensor(temperatures, device=logits.device).unsqueeze(1)
        if any(p.top_k is not None or p.top_p < 1.0 for p in params):
            logits = self._truncate_top(logits, params)
        probs = torch.softmax(logits, dim=-1)
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=logits.device).unsqueeze(1)
            probs = torch.where(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0, probs)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return probs

    def uniform(self, rows: Sequence[SampleRequest], salt: str | None = None) -> torch.Tensor:
        """[B] float64 U(0, 1) draws, one per row; a seeded row's comes from (seed, completion, token
        index, salt) alone. Without a salt they are the draws plain sampling uses."""
        draws = torch.rand(len(rows), generator=self.generator, dtype=torch.float64, device=self.device)
        for i, row in enumerate(rows):
            if row.sampling.seed is not None:
                self._seed_row(row.sampling.seed, row, salt)
                draws[i] = torch.rand(
                    1, generator=self.row_generator, dtype=torch.float64, device=self.device
                )[0]
        return draws

    @staticmethod
    def pick(
        logits: torch.Tensor, probs: torch.Tensor, uniforms: torch.Tensor, rows: Sequence[SampleRequest]
    ) -> torch.Tensor:
        """[B] token ids: drawn from `probs` by `uniforms`, or the argmax of `logits` for greedy rows."""
        token_ids = draw(probs, uniforms)
        greedy = [i for i, row in enumerate(rows) if row.sampling.greedy]
        if greedy:  # only the greedy rows' argmax: a sampled batch pays for none
            at = torch.tensor(greedy, device=logits.device)
            token_ids[at] = logits[at].argmax(dim=-1)
        return token_ids

    def _seed_row(self, seed: int, row: SampleRequest, salt: str | None) -> None:
        self.row_generator.manual_seed(_draw_seed(seed, row.seq_index, len(row.output_token_ids), salt))

    @staticmethod
    def _truncate_top(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Mask tokens outside each row's top-k and top-p nucleus to -inf."""
        vocab = logits.shape[-1]
        device = logits.device
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        top_k = torch.tensor([min(p.top_k or vocab, vocab) for p in params], device=device)
        ranks = torch.arange(vocab, device=device).unsqueeze(0)
        drop = ranks >= top_k.unsqueeze(1)
        top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
        sorted_probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        # Keep a token while the mass before it is under top_p: the most likely token always stays.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= (mass_before >= top_p) & (top_p < 1.0)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(-1, order, sorted_logits)

    @staticmethod
    def _fill_logprobs(
        raw_logprobs: torch.Tensor,
        token_ids: torch.Tensor,
        params: list[SamplingParams],
        results: list[SampledToken],
    ) -> None:
        chosen = raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1).tolist()
        max_top = max(p.logprobs or 0 for p in params)
        top_values, top_ids = raw_logprobs.topk(max_top, dim=-1) if max_top else (None, None)
        for i, p in enumerate(params):
            if p.logprobs is None:
                continue
            results[i].logprob = chosen[i]
            if top_ids is not None and top_values is not None and p.logprobs:
                results[i].top_token_ids = top_ids[i, : p.logprobs].tolist()
                results[i].top_logprobs = top_values[i, : p.logprobs].tolist()
