"""Speculative decoding: propose a few next tokens cheaply, verify them in one forward pass.

A decoding sequence's chunk [t] becomes [t, d1, ..., dk]: the target model computes all k + 1 rows as
one multi-token chunk, and its logits after each row say which drafts it would have produced itself.

Proposers: `NgramProposer` copies what followed the most recent earlier occurrence of the sequence's
last n tokens (prompt lookup: free, and right whenever the output quotes its input); `DraftProposer`
runs a small draft model with the same vocabulary k times. The draft keeps its own KV tensors but in
the target's block ids and slots, so it needs no block manager: a token's draft KV sits where its
target KV sits, and rejected positions are simply overwritten later, like the target's.

Verification (`verify_drafts`) is exact. Each row draws the token the plain sampler would draw there
(same penalties, same seeded noise); when the draft is certain (n-gram, or a greedy request) a draft
is accepted while it equals that token, which is rejection sampling with a one-hot q: accepted with
probability p(d), otherwise a draw from p without d. So greedy output is token-for-token that of plain
decoding, and a seeded request samples the same tokens as without speculation. A draft drawn from a
draft distribution q is accepted with probability min(1, p(d) / q(d)) and otherwise replaced by a draw
from normalize(max(p - q, 0)) (Leviathan et al. 2023, Chen et al. 2023): the output follows p exactly.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import torch

from inferline.config import SpeculativeConfig
from inferline.engine.sampler import SampledToken, Sampler, SampleRequest
from inferline.engine.scheduler import ScheduledChunk, SchedulerOutput
from inferline.errors import InvalidRequestError
from inferline.models.config import ModelConfig
from inferline.types import SamplingParams

if TYPE_CHECKING:
    from collections.abc import Sequence

    from inferline.engine.runner import ModelRunner


class Proposer(Protocol):
    def propose(self, output: SchedulerOutput) -> None:
        """Attach drafts to the chunks that reserved lookahead tokens (at most that many each)."""


def attach_drafts(
    chunk: ScheduledChunk, draft_token_ids: list[int], draft_probs: torch.Tensor | None
) -> None:
    chunk.draft_token_ids = draft_token_ids
    chunk.token_ids = chunk.token_ids + draft_token_ids
    chunk.draft_probs = draft_probs


# ---- n-gram (prompt lookup) -------------------------------------------------------------------


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, output: SchedulerOutput) -> None:
        for chunk in output.chunks:
            if chunk.num_lookahead_tokens:
                tokens = chunk.prompt_token_ids + chunk.output_token_ids
                drafts = self.lookup(tokens, chunk.num_lookahead_tokens)
                if drafts:
                    attach_drafts(chunk, drafts, None)

    def lookup(self, token_ids: list[int], max_drafts: int) -> list[int]:
        """Up to `max_drafts` tokens that followed the latest earlier occurrence of the last n tokens,
        trying the longest n first; [] when none of the last runs occurred before."""
        # bytes.rfind does the scan in C; a hit must start on a token boundary (4 bytes per token).
        data = array("i", token_ids).tobytes()
        searchable = len(data) - 4  # the occurrence must end before the last token
        for n in range(min(self.max_n, len(token_ids) - 1), self.min_n - 1, -1):
            pattern = data[-4 * n :]
            at = data.rfind(pattern, 0, searchable)
            while at > 0 and at % 4:
                at = data.rfind(pattern, 0, at + len(pattern) - 1)
            if at >= 0:
                start = at // 4 + n
                return token_ids[start : start + max_drafts]
        return []


# ---- draft model ------------------------------------------------------------------------------


@dataclass
class DraftToken(SampledToken):
    probs: torch.Tensor | None = None
    """[V] the draft distribution the token was drawn from; None when the draft was certain (greedy)."""


class DraftSampler(Sampler):
    """The draft model's sampler: draws from the request's own distribution (penalties, temperature,
    top-k/p, min-p) under the draft model and keeps it for verification. Its seeded noise is salted
    apart from the target's, so a draft is independent of the draws that judge it."""

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRequest]) -> list[SampledToken]:
        logits = self.apply_penalties(logits, rows)
        if all(r.sampling.greedy for r in rows):
            return [DraftToken(t) for t in logits.argmax(dim=-1).tolist()]
        probs = self.probabilities(logits, rows)
        token_ids = self.pick(logits, probs, self.noise(logits, rows, salt="draft"), rows).tolist()
        return [
            DraftToken(t, probs=None if row.sampling.greedy else probs[i])
            for i, (t, row) in enumerate(zip(token_ids, rows, strict=True))
        ]


def check_draft_vocab(target: ModelConfig, draft: ModelConfig, draft_model: str) -> None:
    if target.vocab_size != draft.vocab_size:
        raise InvalidRequestError(
            f"draft model {draft_model!r} has a vocabulary of {draft.vocab_size} tokens but the target has "
            f"{target.vocab_size}: pick a draft model with the target's tokenizer (e.g. a smaller model "
            "of the same family) or use speculative method 'ngram'",
            "speculative.draft_model",
        )


class DraftProposer:
    """Runs the draft model over every chunk of the step (so its KV covers prompts and accepted tokens),
    then k more single-token steps for the sequences that reserved lookahead: [t] -> d1, [d1] -> d2, ...,
    and a last [dk] that only writes dk's KV, so the draft cache is complete if all k are accepted."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def propose(self, output: SchedulerOutput) -> None:
        active = [c for c in output.chunks if c.num_lookahead_tokens]
        drafts: dict[str, list[DraftToken]] = {c.seq_id: [] for c in active}
        step = [replace(c, sample=c.num_lookahead_tokens > 0) for c in output.chunks]
        num_steps = 0
        while step:
            sampled = self.runner.execute(SchedulerOutput(step))
            num_steps += 1
            for seq_id, tokens in sampled.items():
                drafts[seq_id].extend(t for t in tokens if isinstance(t, DraftToken))
            step = [self._next(c, drafts[c.seq_id]) for c in active if num_steps <= c.num_lookahead_tokens]
        for chunk in active:
            proposed = drafts[chunk.seq_id]
            probs = [t.probs for t in proposed if t.probs is not None]
            stacked = torch.stack(probs) if len(probs) == len(proposed) else None
            attach_drafts(chunk, [t.token_id for t in proposed], stacked)

    @staticmethod
    def _next(chunk: ScheduledChunk, drafts: list[DraftToken]) -> ScheduledChunk:
        proposed = [t.token_id for t in drafts]
        return replace(
            chunk,
            token_ids=proposed[-1:],
            start_position=chunk.start_position + len(proposed),
            output_token_ids=chunk.output_token_ids + proposed,
            sample=len(proposed) < chunk.num_lookahead_tokens,
        )


def build_proposer(spec: SpeculativeConfig, draft_runner: ModelRunner | None) -> Proposer:
    if spec.method == "ngram":
        return NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
    if draft_runner is None:
        raise ValueError("speculative method 'draft' needs the draft model's runner")
    return DraftProposer(draft_runner)


# ---- verification -----------------------------------------------------------------------------


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
    sampler: Sampler, logits: torch.Tensor, chunks: Sequence[ScheduledChunk]
) -> list[list[SampledToken]]:
    """logits: [sum(1 + len(drafts)), V], each chunk's rows in order. Returns per chunk the accepted
    drafts followed by one token from the target (the correction, or the bonus after k accepts)."""
    rows = _verify_rows(chunks)
    raw_logprobs = sampler.raw_logprobs(logits, rows)
    logits = sampler.apply_penalties(logits, rows)
    probs = noise = None
    if all(r.sampling.greedy for r in rows):
        token_ids = logits.argmax(dim=-1)
    else:
        probs, noise = sampler.probabilities(logits, rows), sampler.noise(logits, rows)
        token_ids = sampler.pick(logits, probs, noise, rows)  # [R] what plain sampling draws per row
    targets = token_ids.tolist()
    num_kept = []
    start = 0
    for chunk in chunks:
        end = start + 1 + len(chunk.draft_token_ids)
        if chunk.draft_probs is None or chunk.sampling.greedy or probs is None or noise is None:
            num_accepted = _num_matching(chunk.draft_token_ids, targets[start:end])
        else:
            num_accepted, token_id = _rejection_sample(
                sampler,
                chunk.draft_token_ids,
                chunk.draft_probs,
                probs[start:end],
                noise[start:end],
                rows[start:end],
            )
            token_ids[start : start + num_accepted] = torch.tensor(chunk.draft_token_ids[:num_accepted])
            token_ids[start + num_accepted] = token_id
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
    noise: torch.Tensor,
    rows: Sequence[_VerifyRow],
) -> tuple[int, int]:
    """(accepted drafts, the target's token after them) for drafts drawn from `draft_probs` ([k, V]).

    probs, noise: [k + 1, V] the target's distributions and the plain path's noise for the chunk's rows.
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
        return num_drafts, int((probs[num_drafts] / noise[num_drafts]).argmax())
    at = int(rejected[0, 0])
    residual = (probs[at] - q[at]).clamp_(min=0)
    if float(residual.sum()) <= 0:  # p == q up to rounding: rejection had probability ~0
        residual = probs[at]
    return at, int((residual / noise[at]).argmax())
