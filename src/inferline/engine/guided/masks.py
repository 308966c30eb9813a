"""Token masks of constrained sequences, computed on a worker thread while the forward pass runs.

Design note: a sequence's matcher lags its tokens: before each step computes its mask, the matcher
consumes the tokens the sequence gained since (so n > 1 completions, preemption and recompute need no
hook: a matcher only ever follows `output_token_ids`). A verify chunk needs one mask per row: row i
is the state after its first i drafts, so the worker consumes the drafts the grammar allows, computing
a mask after each, and then rolls them back; the rows after a forbidden draft are never used (the
draft is rejected there) and are left all-allowed. llguidance drops the GIL while it computes a mask,
so the worker runs beside PyTorch's forward pass; the runner waits for it only before sampling.
Masks are bitmasks (one bit per token id, 32 per int32 word, llguidance's layout) and are applied to
the constrained rows alone, so unconstrained rows of the batch cost nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance
import numpy as np
import torch

from inferline.engine.guided.grammar import GrammarCache
from inferline.engine.scheduler import ScheduledChunk, SchedulerOutput
from inferline.types import StructuredOutput


@dataclass
class _MatcherState:
    matcher: llguidance.LLMatcher
    num_consumed: int = 0
    """Of the sequence's output tokens, how many the matcher has consumed."""


class PendingMasks:
    """The masks of one step's constrained chunks, being computed: by seq_id, [1 + drafts, words]."""

    def __init__(self, future: Future[dict[str, torch.Tensor]]) -> None:
        self._future = future

    def result(self) -> dict[str, torch.Tensor]:
        return self._future.result()


@dataclass
class RowMasks:
    """Masks for some rows of a logits batch."""

    rows: torch.Tensor
    """[R] the constrained rows' indices into the logits."""
    bitmask: torch.Tensor
    """[R, words] int32: bit j of word w allows token 32 * w + j."""


def row_masks(chunks: Sequence[ScheduledChunk], masks: dict[str, torch.Tensor]) -> RowMasks | None:
    """The masks laid out for a logits batch holding `chunks`' rows in order (1 + drafts rows each)."""
    rows: list[int] = []
    parts = []
    row = 0
    for chunk in chunks:
        num_rows = 1 + len(chunk.draft_token_ids)
        mask = masks.get(chunk.seq_id)
        if mask is not None:
            rows.extend(range(row, row + num_rows))
            parts.append(mask)
        row += num_rows
    if not rows:
        return None
    return RowMasks(torch.tensor(rows), torch.cat(parts))


def apply_row_masks(logits: torch.Tensor, masks: RowMasks) -> torch.Tensor:
    """logits: [B, V] float; forbidden tokens of the masked rows become -inf (in place)."""
    vocab = logits.shape[1]
    bits = np.unpackbits(masks.bitmask.numpy().view(np.uint8), axis=1, bitorder="little")
    allowed = torch.from_numpy(bits[:, :vocab]).to(device=logits.device, dtype=torch.bool)  # [R, V]
    rows = masks.rows.to(logits.device)
    masked = logits.index_select(0, rows).masked_fill_(~allowed, float("-inf"))
    return logits.index_copy_(0, rows, masked)


class GuidedDecoder:
    """Per-sequence matchers, advanced with each accepted token, and the masks of each step."""

    def __init__(self, grammars: GrammarCache) -> None:
        self.grammars = grammars
        self._states: dict[str, _MatcherState] = {}
        self._words = (grammars.vocab_size + 31) // 32
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferline-masks")

    def check(self, structured: StructuredOutput) -> None:
        """Compile the constraint now (cached), raising InvalidRequestError if it cannot be enforced."""
        self.grammars.matcher(structured)

    def start(self, output: SchedulerOutput) -> PendingMasks | None:
        """Start computing the masks of the step's constrained chunks; None when there are none."""
        jobs = [(c, s) for c in output.chunks if c.sample and (s := c.sampling.structured) is not None]
        if not jobs:
            return None
        return PendingMasks(self._pool.submit(self._compute, jobs))

    def release(self, seq_id: str) -> None:
        """Forget a finished or aborted sequence's matcher."""
        self._states.pop(seq_id, None)

    @property
    def num_active(self) -> int:
        return len(self._states)

    def _compute(self, jobs: list[tuple[ScheduledChunk, StructuredOutput]]) -> dict[str, torch.Tensor]:
        return {chunk.seq_id: self._chunk_masks(chunk, structured) for chunk, structured in jobs}

    def _chunk_masks(self, chunk: ScheduledChunk, structured: StructuredOutput) -> torch.Tensor:
        state = self._states.get(chunk.seq_id)
        if state is None:
            state = self._states[chunk.seq_id] = _MatcherState(self.grammars.matcher(structured))
        matcher = state.matcher
        new_tokens = chunk.output_token_ids[state.num_consumed :]
        if new_tokens:
            matcher.consume_tokens(new_tokens)
            state.num_consumed += len(new_tokens)
        drafts = chunk.draft_token_ids
        masks = torch.full((1 + len(drafts), self._words), -1, dtype=torch.int32)
        num_allowed = matcher.validate_tokens(drafts) if drafts and not matcher.is_error() else 0
        for i in range(1 + num_allowed):
            self._fill(matcher, masks[i])
            if i < num_allowed:
                matcher.consume_token(drafts[i])
        if num_allowed:
            matcher.rollback(num_allowed)
        return masks

    def _fill(self, matcher: llguidance.LLMatcher, row: torch.Tensor) -> None:
        if matcher.is_error():
            # A token the mask did not allow (never sampled; a bug if it happens): end the sequence.
            bits = np.zeros(row.numel() * 32, dtype=np.uint8)
            bits[self.grammars.ll_tokenizer.eos_tokens] = 1
            row.copy_(torch.from_numpy(np.packbits(bits, bitorder="little").view(np.int32)))
            return
        matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
