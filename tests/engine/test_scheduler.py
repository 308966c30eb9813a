"""Scheduler behaviour with hand-built model outputs: no tensors, no model."""

from collections import Counter

from inferline.engine.kv_cache import KVCacheManager
from inferline.engine.scheduler import Scheduler, SchedulerLimits, SchedulerOutput
from inferline.engine.sequence import Sequence
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
