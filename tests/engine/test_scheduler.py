"""Scheduler behaviour with hand-built model outputs: no tensors, no model."""

import time
from collections import Counter

import pytest

from inferline.engine.kv_cache import KVCacheManager, hash_block
from inferline.engine.scheduler import Proposal, ScheduledChunk, Scheduler, SchedulerLimits, SchedulerOutput
from inferline.engine.sequence import Sequence, SequenceStatus
from inferline.types import Priority, Request, SamplingParams

EOS = 0
TOKEN = 7


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    budget: int = 64,
    max_model_len: int = 256,
) -> Scheduler:
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=True)
    return Scheduler(SchedulerLimits(max_num_seqs, budget, max_model_len), kv, frozenset({EOS}))


def add(
    scheduler: Scheduler,
    request_id: str,
    prompt_len: int,
    max_tokens: int = 8,
    priority: Priority = Priority.CONVERSATIONAL,
    tenant: str = "t",
    first_token: int = 1,
) -> Sequence:
    prompt = list(range(first_token, first_token + prompt_len))
    request = Request(request_id, prompt, SamplingParams(max_tokens=max_tokens), priority, tenant)
    seq = Sequence(f"{request_id}#0", request, 0)
    scheduler.add(seq)
    return seq


def step(scheduler: Scheduler) -> tuple[SchedulerOutput, list[Sequence]]:
    output = scheduler.schedule()
    sampled = {c.seq_id: [TOKEN] for c in output.chunks if c.sample}
    return output, [seq for seq, _ in scheduler.update(output, sampled)]


def run_to_completion(scheduler: Scheduler, max_steps: int = 10_000) -> int:
    steps = 0
    while scheduler.has_unfinished():
        step(scheduler)
        steps += 1
        assert steps < max_steps, "scheduler made no progress"
    return steps


def test_long_prompt_is_prefilled_in_chunks_and_samples_once() -> None:
    scheduler = make_scheduler(budget=32)
    seq = add(scheduler, "a", prompt_len=100, max_tokens=2)
    sizes, samples = [], []
    while not seq.output_token_ids:
        output, _ = step(scheduler)
        sizes.append(output.num_tokens)
        samples.append(output.chunks[0].sample)
    assert sizes == [32, 32, 32, 4]
    assert samples == [False, False, False, True]
    assert seq.num_computed_tokens == 100


def test_decode_then_length_finish_frees_all_blocks() -> None:
    scheduler = make_scheduler()
    seq = add(scheduler, "a", prompt_len=10, max_tokens=5)
    run_to_completion(scheduler)
    assert seq.finish_reason == "length"
    assert seq.output_token_ids == [TOKEN] * 5
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks


def test_eos_and_stop_token_finish() -> None:
    scheduler = make_scheduler()
    seq = add(scheduler, "a", prompt_len=4)
    output = scheduler.schedule()
    scheduler.update(output, {seq.seq_id: [EOS]})
    assert seq.finish_reason == "stop"
    seq2 = add(scheduler, "b", prompt_len=4)
    seq2.request.sampling.stop_token_ids = [TOKEN]
    run_to_completion(scheduler)
    assert (seq2.finish_reason, seq2.stop_reason) == ("stop", TOKEN)


def test_tiny_pool_preempts_and_still_finishes_everything() -> None:
    # 12 blocks of 4 tokens: four sequences of 8 + 16 tokens cannot all fit at once.
    scheduler = make_scheduler(num_blocks=12, block_size=4, max_num_seqs=4)
    seqs = [add(scheduler, f"r{i}", prompt_len=8, max_tokens=16, first_token=10 * i + 1) for i in range(4)]
    run_to_completion(scheduler)
    assert scheduler.num_preemptions > 0
    assert all(s.finish_reason == "length" and len(s.output_token_ids) == 16 for s in seqs)
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks


def test_abort_frees_blocks_at_once() -> None:
    scheduler = make_scheduler()
    seq = add(scheduler, "a", prompt_len=20, max_tokens=50)
    step(scheduler)
    assert scheduler.kv_cache.num_free_blocks < scheduler.kv_cache.num_blocks
    scheduler.finish(seq.seq_id, "abort")
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks
    assert not scheduler.has_unfinished()


def test_prefix_cache_hit_skips_computed_blocks() -> None:
    scheduler = make_scheduler(block_size=4)
    add(scheduler, "a", prompt_len=17, max_tokens=1)
    run_to_completion(scheduler)
    add(scheduler, "b", prompt_len=17, max_tokens=1)
    output, _ = step(scheduler)
    assert output.chunks[0].start_position == 16
    assert output.num_tokens == 1
    assert scheduler.kv_cache.prefix_stats.hit_tokens == 16


def test_interactive_request_preempts_a_batch_flood() -> None:
    scheduler = make_scheduler(num_blocks=200, max_num_seqs=4, budget=64)
    for i in range(20):
        add(scheduler, f"batch{i}", prompt_len=12, max_tokens=40, priority=Priority.BATCH, tenant="flood")
    for _ in range(5):
        step(scheduler)
    assert scheduler.num_running == 4
    urgent = add(
        scheduler, "urgent", prompt_len=12, max_tokens=4, priority=Priority.INTERACTIVE, tenant="other"
    )
    _, advanced = step(scheduler)
    assert urgent in advanced, "the interactive request should get its first token in the very next step"
    assert scheduler.num_preemptions == 1


def test_batch_work_narrows_while_foreground_requests_are_near_and_widens_after() -> None:
    kv = KVCacheManager(400, 4, enable_prefix_caching=True)
    limits = SchedulerLimits(8, 512, 256, max_batch_seqs_while_busy=2, foreground_grace_s=0.2)
    scheduler = Scheduler(limits, kv, frozenset({EOS}))
    for i in range(8):
        add(scheduler, f"batch{i}", prompt_len=8, max_tokens=200, priority=Priority.BATCH, tenant="flood")
    output, _ = step(scheduler)
    assert len(output.chunks) == 8, "alone, batch work takes every slot"
    chat = add(
        scheduler, "chat", 8, max_tokens=3, priority=Priority.INTERACTIVE, tenant="app", first_token=100
    )
    output, _ = step(scheduler)
    assert [c.seq_id for c in output.chunks] == ["chat#0"], "the chat's prefill runs alone"
    while chat.status is not SequenceStatus.FINISHED:
        output, _ = step(scheduler)
        batch_rows = [c for c in output.chunks if c.seq_id.startswith("batch")]
        assert len(batch_rows) <= 2, "while a foreground request runs, at most 2 batch sequences compute"
    output, _ = step(scheduler)
    assert len(output.chunks) == 2, "within the grace period the cap still holds"
    assert scheduler.num_preemptions == 1, "only the chat's slot was taken: capped sequences keep their KV"
    time.sleep(0.25)
    output, _ = step(scheduler)
    assert len(output.chunks) == 8, "after the grace period batch work widens again (the preempted one back)"


def test_waiting_batch_work_is_not_ahead_of_higher_classes() -> None:
    scheduler = make_scheduler(num_blocks=200, max_num_seqs=2)
    for i in range(6):
        add(scheduler, f"batch{i}", prompt_len=8, priority=Priority.BATCH)
    add(scheduler, "chat", prompt_len=8, priority=Priority.CONVERSATIONAL)
    assert scheduler.num_waiting == 7
    assert scheduler.waiting.num_at_or_above(Priority.CONVERSATIONAL) == 1  # what admission estimates from
    assert scheduler.waiting.num_at_or_above(Priority.BATCH) == 7


def test_higher_class_waits_for_nothing_but_lower_class_never_preempts_higher() -> None:
    scheduler = make_scheduler(num_blocks=200, max_num_seqs=2)
    high = [add(scheduler, f"i{i}", 8, max_tokens=20, priority=Priority.INTERACTIVE) for i in range(2)]
    step(scheduler)
    low = add(scheduler, "b", 8, max_tokens=5, priority=Priority.BATCH)
    for _ in range(10):
        step(scheduler)
    assert low.output_token_ids == []
    assert scheduler.num_preemptions == 0
    run_to_completion(scheduler)
    assert all(len(s.output_token_ids) == 20 for s in high)


def test_two_flooding_tenants_share_output_tokens_fairly() -> None:
    scheduler = make_scheduler(num_blocks=400, max_num_seqs=4, budget=128)
    for i in range(60):
        # Tenant "heavy" sends all its requests first and asks for more tokens each.
        add(scheduler, f"h{i}", prompt_len=16, max_tokens=24, tenant="heavy")
    for i in range(60):
        add(scheduler, f"l{i}", prompt_len=16, max_tokens=16, tenant="light")
    tokens: Counter[str] = Counter()
    for _ in range(300):
        _, advanced = step(scheduler)
        tokens.update(s.tenant for s in advanced)
    share = tokens["heavy"] / (tokens["heavy"] + tokens["light"])
    assert abs(share - 0.5) <= 0.1, tokens


def test_short_prompt_is_not_stuck_behind_a_long_prefill() -> None:
    scheduler = make_scheduler(num_blocks=400, budget=64)
    add(scheduler, "long", prompt_len=1000, max_tokens=1)
    step(scheduler)
    short = add(scheduler, "short", prompt_len=8, max_tokens=1)
    _, advanced = step(scheduler)
    assert short in advanced


def test_idle_tenant_banks_no_credit() -> None:
    scheduler = make_scheduler(num_blocks=400, max_num_seqs=1, budget=64)
    add(scheduler, "a0", 8, max_tokens=30, tenant="a")
    run_to_completion(scheduler)
    # "b" was idle while "a" ran; now both flood. "b" must not get every slot until it catches up.
    for i in range(10):
        add(scheduler, f"b{i}", 8, max_tokens=4, tenant="b")
        add(scheduler, f"a{i + 1}", 8, max_tokens=4, tenant="a")
    first_tenants = []
    while len(first_tenants) < 6:
        _, advanced = step(scheduler)
        first_tenants += [s.tenant for s in advanced if len(s.output_token_ids) == 1]
    assert first_tenants.count("a") >= 2


# ---- speculative decoding: lookahead slots, proposals in the output, accepted tokens ---------------


class ScriptedProposer:
    """Proposes the next drafts it is given, cut to each chunk's lookahead; records what it was shown."""

    def __init__(self) -> None:
        self.drafts: list[int] = []
        self.seen: list[list[ScheduledChunk]] = []

    def propose(self, chunks: list[ScheduledChunk]) -> dict[str, Proposal]:
        self.seen.append(chunks)
        reserved = [c for c in chunks if c.num_lookahead_tokens]
        return {c.seq_id: Proposal(self.drafts[: c.num_lookahead_tokens]) for c in reserved}


def spec_scheduler(
    num_blocks: int = 64, max_model_len: int = 256, budget: int = 64
) -> tuple[Scheduler, ScriptedProposer]:
    kv = KVCacheManager(num_blocks, 4, enable_prefix_caching=True)
    limits = SchedulerLimits(8, budget, max_model_len, num_speculative_tokens=4)
    proposer = ScriptedProposer()
    return Scheduler(limits, kv, frozenset({EOS}), proposer), proposer


def test_lookahead_stops_at_max_tokens_and_context_length() -> None:
    scheduler, proposer = spec_scheduler(max_model_len=8)
    proposer.drafts = [9, 10, 11, 12]
    seq = add(scheduler, "a", prompt_len=3, max_tokens=4, first_token=5)
    output = scheduler.schedule()
    assert output.chunks[0].num_lookahead_tokens == 0, "a prompt chunk speculates nothing"
    assert [c.num_lookahead_tokens for c in proposer.seen[0]] == [0]
    scheduler.update(output, {seq.seq_id: [8]})
    output = scheduler.schedule()
    assert output.chunks[0].num_lookahead_tokens == 2, "max_tokens 4 leaves 3 tokens: 1 + 2 drafts"
    assert output.chunks[0].token_ids == [8, 9, 10]
    scheduler.update(output, {seq.seq_id: [9, 20]})
    assert seq.output_token_ids == [8, 9, 20]
    seq.request.sampling.max_tokens = 10
    output = scheduler.schedule()
    assert output.chunks[0].num_lookahead_tokens == 1, "max_model_len 8 leaves 2 tokens: 1 + 1 draft"


def test_accepted_tokens_advance_the_cache_and_rejected_ones_are_never_hashed() -> None:
    scheduler, proposer = spec_scheduler()
    kv = scheduler.kv_cache
    seq = add(scheduler, "a", prompt_len=3, max_tokens=16, first_token=5)
    scheduler.update(scheduler.schedule(), {seq.seq_id: [8]})  # prompt + first token fill block 0
    proposer.drafts = [30, 31, 32, 33]
    output = scheduler.schedule()
    chunk = output.chunks[0]
    assert chunk.num_lookahead_tokens == 4
    assert chunk.token_ids == [8, 30, 31, 32, 33]
    # The target accepts 30 and rejects 31 in favour of 40.
    scheduler.update(output, {seq.seq_id: [30, 40]})
    assert seq.output_token_ids == [8, 30, 40]
    assert seq.num_computed_tokens == 5  # 5, 6, 7, 8, 30: the rejected 31..33 do not count
    assert kv.block_hashes[seq.seq_id] == [hash_block(None, [5, 6, 7, 8])]
    assert kv.find_cached_prefix([5, 6, 7, 8, 30, 31, 32, 33, 1]).num_blocks == 1
    assert scheduler.spec.num_drafted_tokens == 4
    assert scheduler.spec.num_accepted_tokens == 1


def test_eos_inside_accepted_drafts_cuts_the_rest() -> None:
    scheduler, proposer = spec_scheduler()
    seq = add(scheduler, "a", prompt_len=3, max_tokens=16, first_token=5)
    scheduler.update(scheduler.schedule(), {seq.seq_id: [8]})
    proposer.drafts = [9, EOS, 11]
    output = scheduler.schedule()
    advanced = scheduler.update(output, {seq.seq_id: [9, EOS, 11, 12]})
    assert advanced == [(seq, 2)]
    assert seq.output_token_ids == [8, 9, EOS]
    assert seq.finish_reason == "stop"
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks


def test_proposals_travel_in_the_scheduler_output() -> None:
    scheduler, proposer = spec_scheduler(budget=16)
    decoding = add(scheduler, "d", prompt_len=3, max_tokens=16, first_token=5)
    step(scheduler)
    add(scheduler, "p", prompt_len=20, first_token=40)
    proposer.drafts = [30, 31, 32]
    output = scheduler.schedule()
    # The proposer saw the whole step as planned, the prefill chunk too, and no drafts yet.
    planned = proposer.seen[-1]
    assert [(c.seq_id, c.token_ids, c.num_lookahead_tokens) for c in planned] == [
        ("d#0", [TOKEN], 4),
        ("p#0", list(range(40, 51)), 0),
    ]
    decode, prefill = output.chunks
    assert (decode.token_ids, decode.draft_token_ids) == ([TOKEN, 30, 31, 32], [30, 31, 32])
    assert decode.draft_probs is None
    assert (prefill.token_ids, prefill.draft_token_ids) == (list(range(40, 51)), [])
    # The budget of 16 paid for the reserved lookahead (1 + 4), not for the 3 drafts proposed.
    assert output.num_tokens == 1 + 3 + 11
    scheduler.update(output, {decoding.seq_id: [30, 31, 32, 33]})
    assert decoding.output_token_ids == [TOKEN, 30, 31, 32, 33]


def test_no_proposal_leaves_a_plain_decode() -> None:
    scheduler, proposer = spec_scheduler()
    seq = add(scheduler, "a", prompt_len=3, max_tokens=16, first_token=5)
    step(scheduler)
    output = scheduler.schedule()
    assert proposer.seen[-1][0].num_lookahead_tokens == 4
    assert (output.chunks[0].token_ids, output.chunks[0].draft_token_ids) == ([TOKEN], [])
    scheduler.update(output, {seq.seq_id: [TOKEN]})
    assert scheduler.spec.num_verify_steps == 0


def test_lookahead_that_does_not_fit_the_kv_pool_is_not_reserved() -> None:
    # One block of 4 tokens: the prompt and first token fill it; a draft would need a second block.
    scheduler, proposer = spec_scheduler(num_blocks=2)
    add(scheduler, "a", prompt_len=3, max_tokens=16, first_token=5)
    add(scheduler, "b", prompt_len=3, max_tokens=16, first_token=5)
    step(scheduler)
    proposer.drafts = [1, 2]
    output = scheduler.schedule()
    assert [c.num_lookahead_tokens for c in output.chunks] == [0, 0]
    assert [c.draft_token_ids for c in output.chunks] == [[], []]
    assert scheduler.num_preemptions == 0, "a guess is not worth preempting anyone for"


class OverfillingProposer:
    def propose(self, chunks: list[ScheduledChunk]) -> dict[str, Proposal]:
        return {c.seq_id: Proposal([1, 2, 3]) for c in chunks if c.num_lookahead_tokens}


def test_a_proposer_must_stay_within_the_reserved_slots() -> None:
    limits = SchedulerLimits(8, 64, 256, num_speculative_tokens=4)
    kv = KVCacheManager(64, 4, enable_prefix_caching=True)
    scheduler = Scheduler(limits, kv, frozenset({EOS}), OverfillingProposer())
    add(scheduler, "a", prompt_len=3, max_tokens=3, first_token=5)
    step(scheduler)
    with pytest.raises(ValueError, match="3 drafts for 1 reserved slots"):
        scheduler.schedule()


def test_speculation_without_a_proposer_is_refused() -> None:
    limits = SchedulerLimits(8, 64, 256, num_speculative_tokens=4)
    with pytest.raises(ValueError, match="num_speculative_tokens=4 needs a proposer"):
        Scheduler(limits, KVCacheManager(64, 4, enable_prefix_caching=True), frozenset({EOS}))
