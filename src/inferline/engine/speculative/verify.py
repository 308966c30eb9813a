"""Verification of drafts against the target's logits; the runner calls it for chunks carrying drafts.

Verification is exact. Each row draws the token the plain sampler would draw there (same penalties,
same seeded draws); when the draft is certain (n-gram, or a greedy request) a draft is accepted while
it equals that token, which is rejection sampling with a one-hot q: accepted with probability p(d),
otherwise a draw from p without d. So greedy output is token-for-token that of plain decoding, and a
seeded request samples the same tokens as without speculation. A draft drawn from a draft distribution
q is accepted with probability min(1, p(d) / q(d)) and otherwise replaced by a draw from
normalize(max(p - q, 0)) (Leviathan et al. 2023, Chen et al. 2023): the output follows p exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inferline.engine.guided.masks import RowMasks
from inferline.engine.sampler import SampledToken, Sampler, draw
from inferline.engine.scheduler import ScheduledChunk
from inferline.types import SamplingParams


@dataclass
class _VerifyRow:
    """Row i of a verify chunk: the request as it stands before the chunk's i-th draft."""

    sampling: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    seq_index: int


def _verify_rows(chunks: Sequence[ScheduledChunk]) -> list[_VerifyRow]:
    return [
        _VerifyRow(c.sampling, c.prompt_token_ids, c.output_token_ids + c.draft_token_ids[:i], c.seq_index)
        for c in chunks
        for i in range(1 + len(c.draft_token_ids))
    ]


def _num_matching(drafts: list[int], targets: list[int]) -> int:
    for i, (draft, target) in enumerate(zip(drafts, targets, strict=False)):
        if draft != target:
            return i
    return len(drafts)


def verify_drafts(
    sampler: Sampler, logits: torch.Tensor, chunks: Sequence[ScheduledChunk], masks: RowMasks | None = None
) -> list[list[SampledToken]]:
    """logits: [sum(1 + len(drafts)), V], each chunk's rows in order. Returns per chunk the accepted
    drafts followed by one token from the target (the correction, or the bonus after k accepts).
    A constrained row's mask zeroes p at the drafts its grammar forbids, so they are always rejected."""
    rows = _verify_rows(chunks)
    raw_logprobs = sampler.raw_logprobs(logits, rows)
    logits = sampler.constrain(sampler.apply_penalties(logits, rows), masks)
    probs = uniforms = None
    if all(r.sampling.greedy for r in rows):
        token_ids = logits.argmax(dim=-1)
    else:
        probs, uniforms = sampler.probabilities(logits, rows), sampler.uniform(rows)
        token_ids = sampler.pick(logits, probs, uniforms, rows)  # [R] what plain sampling draws per row
    targets = token_ids.tolist()
    num_kept = []
    start = 0
    for chunk in chunks:
        end = start + 1 + len(chunk.draft_token_ids)
        if chunk.draft_probs is None or chunk.sampling.greedy or probs is None or uniforms is None:
            num_accepted = _num_matching(chunk.draft_token_ids, targets[start:end])
        else:
            num_accepted, correction = _rejection_sample(
                sampler,
                chunk.draft_token_ids,
                chunk.draft_probs,
                probs[start:end],
                uniforms[start:end],
                rows[start:end],
            )
            token_ids[start : start + num_accepted] = torch.tensor(chunk.draft_token_ids[:num_accepted])
            if correction is not None:
                token_ids[start + num_accepted] = correction
        num_kept.append(num_accepted + 1)
        start = end
    results = sampler.results(token_ids, rows, raw_logprobs)
    out, start = [], 0
    for chunk, kept in zip(chunks, num_kept, strict=True):
        out.append(results[start : start + kept])
        start += 1 + len(chunk.draft_token_ids)
    return out


def _rejection_sample(
    sampler: Sampler,
    draft_token_ids: list[int],
    draft_probs: torch.Tensor,
    probs: torch.Tensor,
    uniforms: torch.Tensor,
    rows: Sequence[_VerifyRow],
) -> tuple[int, int | None]:
    """(accepted drafts, the correction after them) for drafts drawn from `draft_probs` ([k, V]); the
    correction is None when all k were accepted: the bonus token is then the plain draw of row k.

    probs: [k + 1, V] the target's distributions, uniforms: [k + 1] the plain path's draws, for the
    chunk's rows.
    """
    num_drafts = len(draft_token_ids)
    drafts = torch.tensor(draft_token_ids, device=probs.device)
    q = draft_probs.to(probs.device)  # [k, V]
    p_draft = probs[:num_drafts].gather(1, drafts.unsqueeze(1)).squeeze(1)
    q_draft = q.gather(1, drafts.unsqueeze(1)).squeeze(1)
    # Accept while u < p(d) / q(d); q(d) > 0 because d was drawn from q.
    accepted = sampler.uniform(rows[:num_drafts], salt="accept") * q_draft < p_draft
    rejected = (~accepted).nonzero()
    if len(rejected) == 0:
        return num_drafts, None
    at = int(rejected[0, 0])
    residual = (probs[at] - q[at]).clamp_(min=0)
    if float(residual.sum()) <= 0:  # p == q up to rounding: rejection had probability ~0
        residual = probs[at]
    # The row's plain draw is unused here (its target was not taken), so it is fresh for the residual.
    return at, int(draw(residual.unsqueeze(0), uniforms[at : at + 1])[0])
