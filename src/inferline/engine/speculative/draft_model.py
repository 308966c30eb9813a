"""The draft-model proposer: a small model with the target's vocabulary guesses k tokens, one pass each.

The draft keeps its own KV tensors but in the target's block ids and slots, so it needs no block
manager: a token's draft KV sits where its target KV sits, and rejected positions are simply
overwritten later, like the target's. It runs on the model runner's one entry point, `execute`, with
its own sampler; the runner knows nothing of proposers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from inferline.config import EngineConfig, SpeculativeConfig
from inferline.engine.guided.masks import RowMasks
from inferline.engine.model_loader import LoadedModel, load_model
from inferline.engine.runner import ModelRunner
from inferline.engine.sampler import SampledToken, Sampler, SampleRequest
from inferline.engine.scheduler import Proposal, ScheduledChunk, SchedulerOutput
from inferline.errors import InvalidRequestError
from inferline.models.config import ModelConfig


@dataclass
class DraftToken(SampledToken):
    probs: torch.Tensor | None = None
    """[V] the draft distribution the token was drawn from; None when the draft was certain (greedy)."""


class DraftSampler(Sampler):
    """The draft model's sampler: draws from the request's own distribution (penalties, temperature,
    top-k/p, min-p) under the draft model and keeps it for verification. Its seeded draws are salted
    apart from the target's, so a draft is independent of the draws that judge it."""

    def __call__(
        self, logits: torch.Tensor, rows: Sequence[SampleRequest], masks: RowMasks | None = None
    ) -> list[SampledToken]:
        logits = self.constrain(self.apply_penalties(logits, rows), masks)
        if all(r.sampling.greedy for r in rows):
            return [DraftToken(t) for t in logits.argmax(dim=-1).tolist()]
        probs = self.probabilities(logits, rows)
        token_ids = self.pick(logits, probs, self.uniform(rows, salt="draft"), rows).tolist()
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


def load_draft_model(spec: SpeculativeConfig, target: LoadedModel, engine: EngineConfig) -> LoadedModel:
    """The draft model on the target's device, in the engine's dtype unless quantized."""
    draft_model = spec.draft_model or "default"  # SpeculativeConfig requires it for method 'draft'
    draft = load_model(
        EngineConfig(
            model=draft_model,
            device=str(target.device),
            # A draft quantized on request computes in its kernels' dtype, whatever the target's.
            dtype=engine.dtype if spec.draft_quantization in ("auto", "none") else "auto",
            quantization=spec.draft_quantization,
        )
    )
    check_draft_vocab(target.config, draft.config, draft_model)
    return draft


class DraftModelProposer:
    """Runs the draft model over every chunk of the step (so its KV covers prompts and accepted tokens),
    then k more single-token steps for the sequences that reserved lookahead: [t] -> d1, [d1] -> d2, ...,
    and a last [dk] that only writes dk's KV, so the draft cache is complete if all k are accepted."""

    def __init__(
        self, draft: LoadedModel, num_blocks: int, block_size: int, seed: int, cpu_decode_step: bool
    ) -> None:
        # seed + 1: the draft's unseeded draws start apart from the target sampler's.
        sampler = DraftSampler(seed + 1, draft.device)
        self.runner = ModelRunner(
            draft.model, num_blocks, block_size, sampler, cpu_decode_step=cpu_decode_step
        )

    def propose(self, chunks: list[ScheduledChunk]) -> dict[str, Proposal]:
        active = [c for c in chunks if c.num_lookahead_tokens]
        drafts: dict[str, list[DraftToken]] = {c.seq_id: [] for c in active}
        step = [replace(c, sample=c.num_lookahead_tokens > 0) for c in chunks]
        num_steps = 0
        while step:
            sampled = self.runner.execute(SchedulerOutput(step))
            num_steps += 1
            for seq_id, tokens in sampled.items():
                drafts[seq_id].extend(t for t in tokens if isinstance(t, DraftToken))
            step = [self._next(c, drafts[c.seq_id]) for c in active if num_steps <= c.num_lookahead_tokens]
        proposals = {}
        for chunk in active:
            proposed = drafts[chunk.seq_id]
            probs = [t.probs for t in proposed if t.probs is not None]
            stacked = torch.stack(probs) if len(probs) == len(proposed) else None
            proposals[chunk.seq_id] = Proposal([t.token_id for t in proposed], stacked)
        return proposals

    @staticmethod
    def _next(chunk: ScheduledChunk, drafts: list[DraftToken]) -> ScheduledChunk:
        proposed = [t.token_id for t in drafts]
        return replace(
            chunk,
            token_ids=proposed[-1:],
            start_position=chunk.start_position + len(proposed),
            output_token_ids=chunk.output_token_ids + proposed,
            sample=len(proposed) < chunk.num_lookahead_tokens,
            copied_block=None,  # copied before the first draft step: again would undo its KV
        )
