"""The scheduler: which sequences compute how many tokens in the next step. It never touches tensors.

Every step walks the priority classes from highest to lowest. In each class the running sequences
come first (oldest first), each taking the tokens it still needs (one for a decode, a chunk for a
prompt) out of the step's token budget; then waiting sequences of the class are admitted in fair-queue
order while the budget, the sequence slots and the KV blocks allow. A waiting sequence may preempt
running sequences of a lower class; a running sequence that cannot grow preempts the lowest-ranked
running sequence not yet scheduled, or itself. Preemption is by recompute: the victim's blocks are
freed and it goes back to the head of its queue, keeping its generated tokens (and, through the
prefix cache, often its KV).

Batch work yields: while any interactive or conversational sequence is in the engine (or was, within
`foreground_grace_s`), at most `max_batch_seqs_while_busy` batch-class sequences compute in a step,
and none in a step that prefills a foreground prompt. The rest keep their KV and wait. A step is as
slow as its widest batch (32 decoding rows took ~130 ms on 2 cores, 4 rows ~15 ms, and a prefill
mixed with decodes leaves the C++ decode step), and a new prompt's first token waits for the step in
flight.

With speculative decoding on, a sequence that samples after one token reserves budget and KV slots
for up to k draft tokens besides it (never past max_tokens or the context length, and never at the
cost of preempting anyone). Once the step is planned, the proposer is shown it and fills those slots
with drafts, and the chunks are built with them, so the output leaves `schedule` complete; `update`
appends the accepted drafts, advancing the computed tokens only over verified KV.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from inferline.engine.fair_queue import TenantCounters, WaitingQueues
from inferline.engine.kv_cache import KVCacheManager
from inferline.engine.sequence import Sequence, SequenceStatus
from inferline.types import Priority, SamplingParams

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass
class ScheduledChunk:
    """Tokens of one sequence whose KV the next step computes."""

    seq_id: str
    token_ids: list[int]
    start_position: int
    """Position of token_ids[0] in the sequence."""
    block_ids: list[int]
    """The sequence's whole block table, covering start_position + len(token_ids) tokens."""
    sample: bool
    """The chunk ends at the sequence's last token, so the step samples the next one."""
    sampling: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    """Generated so far (penalties read it; its length indexes the token being sampled)."""
    seq_index: int
    """Which of the request's n completions (seeded sampling differs per completion)."""
    copied_block: tuple[int, int] | None = None
    """(cached block, fresh block of this sequence): copy the first's KV into the second before the step
    (a cached tail of the prompt: kv_cache.py); the chunk starts after the tokens it covers."""
    num_lookahead_tokens: int = 0
    """Draft tokens this chunk may carry after its one token: budget and KV slots are reserved."""
    draft_token_ids: list[int] = field(default_factory=list)
    """Proposed tokens, also appended to token_ids: the step verifies them (at most the lookahead)."""
    draft_probs: torch.Tensor | None = None
    """[len(draft_token_ids), V] the draft model's distributions the drafts were sampled from; None when
    the drafts are certain (n-gram lookup, greedy draft), which verifies them by plain sampling."""


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    """What the step computes, proposed drafts included."""
    preempted_seq_ids: list[str] = field(default_factory=list)
    """Sequences that lost their blocks this step (they recompute when readmitted)."""

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass
class Proposal:
    """A proposer's guess at how one sequence continues after its scheduled token."""

    draft_token_ids: list[int]
    """At most the chunk's num_lookahead_tokens tokens; [] when the proposer has no guess."""
    draft_probs: torch.Tensor | None = None
    """[len(draft_token_ids), V] the distributions the drafts were drawn from; None when certain."""


class Proposer(Protocol):
    """What the scheduler asks of speculative decoding: drafts for the slots it reserved."""

    def propose(self, chunks: list[ScheduledChunk]) -> dict[str, Proposal]:
        """Proposals by seq_id for the chunks with lookahead. `chunks` is the whole step as planned,
        without drafts: a draft model computes its own KV over every chunk of it."""
        ...


@dataclass
class SchedulerLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    input_token_weight: float = 1.0
    output_token_weight: float = 2.0
    num_speculative_tokens: int = 0
    """Draft tokens a decoding sequence may verify per step; 0 turns speculation off."""
    max_batch_seqs_while_busy: int | None = None
    """Batch-class sequences computed per step while foreground work is present; None: no cap."""
    foreground_grace_s: float = 1.0
    """How long after the last foreground sequence the cap holds (the next request is often near)."""


@dataclass
class SpecDecodeCounters:
    num_drafted_tokens: int = 0
    num_accepted_tokens: int = 0
    num_verify_steps: int = 0
    """Chunks that carried at least one draft token."""


def _with_drafts(chunk: ScheduledChunk, proposal: Proposal | None) -> ScheduledChunk:
    if proposal is None or not proposal.draft_token_ids:
        return chunk
    drafts = proposal.draft_token_ids
    if len(drafts) > chunk.num_lookahead_tokens:
        raise ValueError(
            f"the proposer gave {chunk.seq_id} {len(drafts)} drafts for {chunk.num_lookahead_tokens} "
            "reserved slots: a proposer must stop at the chunk's num_lookahead_tokens"
        )
    return replace(
        chunk, token_ids=chunk.token_ids + drafts, draft_token_ids=drafts, draft_probs=proposal.draft_probs
    )


def _rank(seq: Sequence) -> tuple[int, float, int]:
    """Smaller ranks are served first and preempted last."""
    return (-int(seq.priority), seq.request.arrival_time, seq.index)


class Scheduler:
    def __init__(
        self,
        limits: SchedulerLimits,
        kv_cache: KVCacheManager,
        eos_token_ids: frozenset[int],
        proposer: Proposer | None = None,
    ) -> None:
        if limits.num_speculative_tokens and proposer is None:
            raise ValueError(
                f"num_speculative_tokens={limits.num_speculative_tokens} needs a proposer to fill the "
                "reserved draft slots: pass one, or set num_speculative_tokens=0"
            )
        self.limits = limits
        self.kv_cache = kv_cache
        self.eos_token_ids = eos_token_ids
        self.proposer = proposer
        self.counters = TenantCounters()
        self.waiting = WaitingQueues(self.counters)
        self.running: list[Sequence] = []
        self.seqs: dict[str, Sequence] = {}
        self.num_preemptions = 0
        self.spec = SpecDecodeCounters()
        self._foreground_seen_at = -float("inf")

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.seqs)

    def add(self, seq: Sequence) -> None:
        self.seqs[seq.seq_id] = seq
        self.counters.activate(seq.tenant)
        self.waiting.push(seq)

    def finish(self, seq_id: str, reason: str, stop_reason: str | int | None = None) -> Sequence | None:
        """End a sequence wherever it is and free its blocks at once; None if it already ended."""
        seq = self.seqs.pop(seq_id, None)
        if seq is None:
            return None
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.kv_cache.free(seq_id)
        self.counters.deactivate(seq.tenant)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        return seq

    # ---- schedule -----------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        plan = SchedulerOutput()
        self.running.sort(key=_rank)
        scheduled: set[str] = set()
        budget = self.limits.max_num_batched_tokens
        max_batch_seqs = self._max_batch_seqs()
        for priority in sorted(Priority, reverse=True):
            num_seqs = 0 if priority is Priority.BATCH else None
            capped = num_seqs is not None and max_batch_seqs < self.limits.max_num_seqs
            if capped and any(len(c.token_ids) > 1 for c in plan.chunks):
                max_batch_seqs = 0  # a foreground prompt's prefill runs alone: its first token waits less
            for seq in [s for s in self.running if s.priority == priority]:
                if budget == 0 or (num_seqs is not None and num_seqs >= max_batch_seqs):
                    break
                if seq.status is SequenceStatus.RUNNING and self._grow(seq, budget, scheduled, plan):
                    budget -= len(plan.chunks[-1].token_ids) + plan.chunks[-1].num_lookahead_tokens
                    num_seqs = None if num_seqs is None else num_seqs + 1
            while budget > 0 and (num_seqs is None or num_seqs < max_batch_seqs):
                candidate = self.waiting.peek(priority)
                if candidate is None or not self._admit(candidate, budget, scheduled, plan):
                    break
                budget -= len(plan.chunks[-1].token_ids)
                num_seqs = None if num_seqs is None else num_seqs + 1
        return SchedulerOutput(self._with_proposals(plan.chunks), plan.preempted_seq_ids)

    def _max_batch_seqs(self) -> int:
        """How many batch-class sequences this step may compute: all, unless foreground work is near."""
        cap = self.limits.max_batch_seqs_while_busy
        if cap is None:
            return self.limits.max_num_seqs
        now = time.monotonic()
        foreground = self.waiting.num_at_or_above(Priority.CONVERSATIONAL) or any(
            s.priority > Priority.BATCH for s in self.running
        )
        if foreground:
            self._foreground_seen_at = now
        elif now - self._foreground_seen_at > self.limits.foreground_grace_s:
            return self.limits.max_num_seqs
        return cap

    def _with_proposals(self, chunks: list[ScheduledChunk]) -> list[ScheduledChunk]:
        """The planned chunks, each carrying the drafts proposed for its reserved lookahead. The proposer
        sees every step, lookahead or not: a draft model must compute its KV over every prompt chunk."""
        if self.proposer is None or not chunks:
            return chunks
        proposals = self.proposer.propose(chunks)
        return [_with_drafts(c, proposals.get(c.seq_id)) for c in chunks]

    def _grow(self, seq: Sequence, budget: int, scheduled: set[str], output: SchedulerOutput) -> bool:
        num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
        if num_new > 1 and self.waiting:
            # A long prompt in mid-prefill leaves half the budget to waiting prompts, so short prompts
            # are not stuck behind it.
            num_new = min(num_new, max(self.limits.max_num_batched_tokens // 2, 1))
        total = seq.num_computed_tokens + num_new
        num_lookahead = self._lookahead(seq, budget) if total == seq.num_tokens and num_new == 1 else 0
        if num_lookahead and not self.kv_cache.can_allocate(seq.seq_id, total + num_lookahead):
            num_lookahead = 0  # a guess is not worth preempting anyone for
        while not self.kv_cache.can_allocate(seq.seq_id, total):
            victim = self._victim(scheduled, below=None, exclude=seq)
            self._preempt(victim or seq, output)
            if victim is None:
                return False
        self.kv_cache.allocate(seq.seq_id, total + num_lookahead)
        self._emit(seq, num_new, scheduled, output, num_lookahead)
        return True

    def _lookahead(self, seq: Sequence, budget: int) -> int:
        """Draft tokens the sequence may verify this step: the step emits at most drafts + 1 tokens."""
        if not self.limits.num_speculative_tokens:
            return 0
        room = min(
            self.limits.num_speculative_tokens, budget - 1, self.limits.max_model_len - seq.num_tokens - 1
        )
        max_tokens = seq.sampling.max_tokens
        if max_tokens is not None:
            room = min(room, max_tokens - len(seq.output_token_ids) - 1)
        return max(room, 0)

    def _admit(self, seq: Sequence, budget: int, scheduled: set[str], output: SchedulerOutput) -> bool:
        if len(self.running) >= self.limits.max_num_seqs:
            victim = self._victim(scheduled, below=seq.priority, exclude=seq)
            if victim is None:
                return False
            self._preempt(victim, output)
        tokens = seq.all_token_ids
        prefix = self.kv_cache.find_cached_prefix(tokens)
        num_cached = prefix.num_tokens(self.kv_cache.block_size)
        num_new = min(seq.num_tokens - num_cached, budget)
        while not self.kv_cache.can_allocate(seq.seq_id, num_cached + num_new, prefix):
            victim = self._victim(scheduled, below=seq.priority, exclude=seq)
            if victim is None:
                return False
            self._preempt(victim, output)
        copy = self.kv_cache.allocate(seq.seq_id, num_cached + num_new, prefix)
        self.kv_cache.record_prefix_lookup(
            len(seq.prompt_token_ids), min(num_cached, len(seq.prompt_token_ids))
        )
        if seq.num_preemptions == 0:
            seq.num_cached_prompt_tokens = min(num_cached, len(seq.prompt_token_ids))
            seq.first_scheduled_at = time.monotonic()
        seq.num_computed_tokens = num_cached
        self.waiting.remove(seq)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        self._emit(seq, num_new, scheduled, output, copied_block=copy)
        return True

    def _victim(self, scheduled: set[str], below: Priority | None, exclude: Sequence) -> Sequence | None:
        """The lowest-ranked running sequence not yet scheduled this step (of a class under `below`)."""
        for seq in reversed(self.running):
            if seq is exclude or seq.seq_id in scheduled:
                continue
            if below is None or seq.priority < below:
                return seq
            return None
        return None

    def _preempt(self, seq: Sequence, output: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.kv_cache.free(seq.seq_id)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.push(seq, front=True)
        output.preempted_seq_ids.append(seq.seq_id)
        logger.info(
            "preempted %s (class %s, tenant %s) after %d generated tokens; it will be recomputed",
            seq.seq_id,
            seq.priority.name.lower(),
            seq.tenant,
            len(seq.output_token_ids),
        )

    def _emit(
        self,
        seq: Sequence,
        num_new: int,
        scheduled: set[str],
        output: SchedulerOutput,
        num_lookahead: int = 0,
        copied_block: tuple[int, int] | None = None,
    ) -> None:
        start = seq.num_computed_tokens
        end = start + num_new
        num_prompt = len(seq.prompt_token_ids)
        num_input = max(min(end, num_prompt) - start, 0)
        self.counters.charge(
            seq.tenant,
            num_input * self.limits.input_token_weight
            + (num_new - num_input) * self.limits.output_token_weight,
        )
        scheduled.add(seq.seq_id)
        output.chunks.append(
            ScheduledChunk(
                seq_id=seq.seq_id,
                token_ids=seq.token_ids_between(start, end),
                start_position=start,
                block_ids=list(self.kv_cache.block_ids(seq.seq_id)),
                sample=end == seq.num_tokens,
                sampling=seq.sampling,
                prompt_token_ids=seq.prompt_token_ids,
                output_token_ids=seq.output_token_ids,
                seq_index=seq.index,
                copied_block=copied_block,
                num_lookahead_tokens=num_lookahead,
            )
        )

    # ---- update -------------------------------------------------------------------------------

    def update(
        self, output: SchedulerOutput, sampled_token_ids: dict[str, list[int]]
    ) -> list[tuple[Sequence, int]]:
        """Advance the scheduled sequences by the tokens each chunk produced (one, or a verify chunk's
        accepted drafts plus one); return the sequences that grew, with how many tokens they kept
        (fewer when a stop condition cut the list; finished sequences included)."""
        advanced = []
        for chunk in output.chunks:
            seq = self.seqs.get(chunk.seq_id)
            if seq is None or seq.status is not SequenceStatus.RUNNING:
                continue
            token_ids = sampled_token_ids[seq.seq_id] if chunk.sample else []
            num_accepted = len(token_ids) - 1 if chunk.draft_token_ids else 0
            if chunk.draft_token_ids:
                self._record_verify(seq, len(chunk.draft_token_ids), num_accepted)
            # Only verified KV counts as computed: rejected drafts' slots are overwritten later, and a
            # block is hashed for sharing only once every token in it is verified.
            num_computed = seq.num_computed_tokens + len(chunk.token_ids) - len(chunk.draft_token_ids)
            num_kept, stop = self._append(seq, token_ids)
            prompt_done = seq.num_computed_tokens < len(seq.prompt_token_ids) <= num_computed
            seq.num_computed_tokens = min(num_computed + num_accepted, seq.num_tokens)
            if self.kv_cache.has_uncached_full_blocks(seq.seq_id, seq.num_computed_tokens):
                self.kv_cache.cache_full_blocks(seq.seq_id, seq.all_token_ids, seq.num_computed_tokens)
            if prompt_done:
                self.kv_cache.cache_prompt_tail(seq.seq_id, seq.prompt_token_ids)
            if token_ids:
                advanced.append((seq, num_kept))
            if stop is not None:
                self.finish(seq.seq_id, *stop)
        return advanced

    def _record_verify(self, seq: Sequence, num_drafted: int, num_accepted: int) -> None:
        self.spec.num_drafted_tokens += num_drafted
        self.spec.num_accepted_tokens += num_accepted
        self.spec.num_verify_steps += 1
        # Accepted drafts are generated tokens like any other: the tenant pays for them.
        self.counters.charge(seq.tenant, num_accepted * self.limits.output_token_weight)

    def _append(self, seq: Sequence, token_ids: list[int]) -> tuple[int, tuple[str, str | int | None] | None]:
        """Append tokens up to the first that ends the sequence; return how many, and the stop."""
        for num_kept, token_id in enumerate(token_ids, start=1):
            seq.output_token_ids.append(token_id)
            stop = self._stop(seq, token_id)
            if stop is not None:
                return num_kept, stop
        return len(token_ids), None

    def _stop(self, seq: Sequence, token_id: int) -> tuple[str, str | int | None] | None:
        """(finish reason, stop reason) if `token_id`, just appended, ends the sequence."""
        sampling = seq.sampling
        if token_id in sampling.stop_token_ids:
            return "stop", token_id
        if not sampling.ignore_eos and token_id in self.eos_token_ids:
            return "stop", None
        if seq.num_tokens >= self.limits.max_model_len or (
            sampling.max_tokens is not None and len(seq.output_token_ids) >= sampling.max_tokens
        ):
            return "length", None
        return None
