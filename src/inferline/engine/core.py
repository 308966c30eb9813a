"""EngineCore: requests in, deltas out. A step is three calls: schedule, execute, update."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferline.config import EngineConfig
from inferline.engine.guided.grammar import GrammarCache
from inferline.engine.guided.masks import GuidedDecoder
from inferline.engine.kv_cache import KVCacheManager
from inferline.engine.memory import plan_kv_pool
from inferline.engine.model_loader import LoadedModel, load_model
from inferline.engine.output import TextStream, to_token_logprob
from inferline.engine.runner import ModelRunner, kv_cache_dtype
from inferline.engine.sampler import SampledToken, Sampler
from inferline.engine.scheduler import Proposer, Scheduler, SchedulerLimits
from inferline.engine.sequence import Sequence
from inferline.engine.speculative.draft_model import DraftModelProposer, load_draft_model
from inferline.engine.speculative.ngram import NgramProposer
from inferline.errors import InvalidRequestError
from inferline.types import Delta, Priority, Request, Usage


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_preemptions: int
    num_steps: int
    kv_num_blocks: int
    kv_num_free_blocks: int
    kv_usage: float
    """Fraction of KV blocks held by live sequences."""
    prefix_queried_tokens: int
    prefix_hit_tokens: int
    prefix_hit_rate: float
    spec_drafted_tokens: int = 0
    """Speculative decoding: draft tokens proposed and verified since start."""
    spec_accepted_tokens: int = 0
    spec_verify_steps: int = 0
    """Sequence-steps that verified at least one draft token."""
    num_waiting_above_batch: int = 0
    """Waiting sequences of the interactive and conversational classes: what a new request of those
    classes queues behind (batch work waits behind them and is preempted for them)."""

    @property
    def spec_acceptance_rate(self) -> float:
        """Share of draft tokens the target accepted."""
        return self.spec_accepted_tokens / self.spec_drafted_tokens if self.spec_drafted_tokens else 0.0

    @property
    def spec_mean_accepted_length(self) -> float:
        """Tokens one verify step emits on average: accepted drafts plus the target's own (1.0 = no gain)."""
        return 1.0 + self.spec_accepted_tokens / self.spec_verify_steps if self.spec_verify_steps else 0.0


@dataclass
class _RequestState:
    request: Request
    seqs: list[Sequence]
    streams: list[TextStream]
    siblings_pending: bool
    """n > 1: completions 1..n-1 join once completion 0 has prefilled the prompt, to share its blocks."""
    num_finished: int = 0
    finished_indices: set[int] = field(default_factory=set)


class EngineCore:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        self.loaded = loaded if loaded is not None else load_model(config)
        self.tokenizer = self.loaded.tokenizer
        spec = config.speculative
        draft = None
        if spec is not None and spec.method == "draft":
            draft = load_draft_model(spec, self.loaded, config)
        plan = plan_kv_pool(
            config,
            self.loaded.config,
            kv_cache_dtype(self.loaded.dtype, self.loaded.device),
            self.loaded.device,
            draft.config if draft is not None else None,
        )
        self.kv_plan = plan
        self.max_model_len = plan.max_model_len
        self.kv_cache = KVCacheManager(plan.num_blocks, config.block_size, config.enable_prefix_caching)
        limits = SchedulerLimits(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=plan.max_model_len,
            input_token_weight=config.tenant_input_token_weight,
            output_token_weight=config.tenant_output_token_weight,
            num_speculative_tokens=spec.num_speculative_tokens if spec is not None else 0,
            max_batch_seqs_while_busy=config.max_batch_seqs_while_busy,
            foreground_grace_s=config.foreground_grace_s,
        )
        self.runner = ModelRunner(
            self.loaded.model,
            plan.num_blocks,
            config.block_size,
            Sampler(config.seed, self.loaded.device),
            config.single_stream_threads,
            config.cpu_decode_step,
        )
        proposer: Proposer | None = None
        if draft is not None:
            proposer = DraftModelProposer(
                draft, plan.num_blocks, config.block_size, config.seed, config.cpu_decode_step
            )
        elif spec is not None:
            proposer = NgramProposer(spec.prompt_lookup_min, spec.prompt_lookup_max)
        self.scheduler = Scheduler(limits, self.kv_cache, self.loaded.eos_token_ids, proposer)
        self.guided = GuidedDecoder(
            GrammarCache(self.tokenizer, self.loaded.config.vocab_size, config.max_cached_grammars)
        )
        self.requests: dict[str, _RequestState] = {}
        self.num_steps = 0

    # ---- requests in --------------------------------------------------------------------------

    def validate(self, request: Request) -> None:
        """Raise InvalidRequestError naming the field if the request can never be served."""
        if request.request_id in self.requests:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in flight", "request_id")
        prompt = request.prompt_token_ids
        if not prompt:
            raise InvalidRequestError("prompt is empty: give at least one token of text", "prompt")
        if len(prompt) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(prompt)} tokens, but this model serves at most {self.max_model_len} "
                "tokens of prompt plus completion (max_model_len): shorten the prompt",
                "prompt",
            )
        vocab_size = self.loaded.config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise InvalidRequestError(f"prompt token ids must lie in [0, {vocab_size})", "prompt")
        request.priority = Priority.parse(request.priority)
        request.sampling.validate()
        if request.sampling.structured is not None:
            self.guided.check(request.sampling.structured)  # compiled now, before the request queues
        if request.sampling.max_tokens is None:
            request.sampling.max_tokens = self.max_model_len - len(prompt)

    def add_request(self, request: Request) -> None:
        self.validate(request)
        n = request.sampling.n
        seqs = [Sequence(f"{request.request_id}#{i}", request, i) for i in range(n)]
        streams = [TextStream(self.tokenizer, request.prompt_token_ids, request.sampling.stop) for _ in seqs]
        self.requests[request.request_id] = _RequestState(request, seqs, streams, siblings_pending=n > 1)
        self.scheduler.add(seqs[0])

    def abort(self, request_id: str) -> list[Delta]:
        """End a request now; its blocks are free before this returns. Unknown ids are ignored."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return []
        deltas = []
        for seq in state.seqs:
            if seq.index in state.finished_indices:
                continue
            self.scheduler.finish(seq.seq_id, "abort")
            self.guided.release(seq.seq_id)
            deltas.append(Delta(request_id, seq.index, "", [], finish_reason="abort"))
        if deltas:
            deltas[-1].usage = self._usage(state)
        return deltas

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ---- the step -----------------------------------------------------------------------------

    def step(self) -> list[Delta]:
        output = self.scheduler.schedule()
        if output.is_empty:
            return []
        # Guided sequences' token masks are computed on a worker thread while the model runs.
        sampled = self.runner.execute(output, self.guided.start(output))
        advanced = self.scheduler.update(
            output, {seq_id: [s.token_id for s in tokens] for seq_id, tokens in sampled.items()}
        )
        self.num_steps += 1
        return [self._delta(seq, sampled[seq.seq_id][:num_kept]) for seq, num_kept in advanced]

    def _delta(self, seq: Sequence, sampled: list[SampledToken]) -> Delta:
        state = self.requests[seq.request.request_id]
        stream = state.streams[seq.index]
        text, sampled = self._stream_text(seq, stream, sampled)
        if state.siblings_pending:
            state.siblings_pending = False
            for sibling in state.seqs[1:]:
                self.scheduler.add(sibling)
        logprobs = [lp for lp in (to_token_logprob(self.tokenizer, s) for s in sampled) if lp is not None]
        delta = Delta(
            seq.request.request_id,
            seq.index,
            text,
            [s.token_id for s in sampled],
            logprobs=logprobs or None,
            finish_reason=seq.finish_reason if seq.is_finished else None,
            stop_reason=seq.stop_reason,
        )
        if seq.is_finished:
            self.guided.release(seq.seq_id)
            state.finished_indices.add(seq.index)
            if len(state.finished_indices) == len(state.seqs):
                delta.usage = self._usage(state)
                del self.requests[seq.request.request_id]
        return delta

    def _stream_text(
        self, seq: Sequence, stream: TextStream, sampled: list[SampledToken]
    ) -> tuple[str, list[SampledToken]]:
        """The new text of `sampled`, and the tokens kept: a stop string ends the sequence at the
        token that completed it, dropping any accepted drafts after it."""
        text = ""
        for num_kept, token in enumerate(sampled, start=1):
            text += stream.append(token.token_id, finished=seq.is_finished and num_kept == len(sampled))
            if stream.stopped_by is None:
                continue
            if not seq.is_finished:
                self.scheduler.finish(seq.seq_id, "stop", stream.stopped_by)
            seq.finish_reason, seq.stop_reason = "stop", stream.stopped_by
            del seq.output_token_ids[len(seq.output_token_ids) - len(sampled) + num_kept :]
            return text, sampled[:num_kept]
        return text, sampled

    @staticmethod
    def _usage(state: _RequestState) -> Usage:
        return Usage(
            prompt_tokens=len(state.request.prompt_token_ids),
            completion_tokens=sum(len(s.output_token_ids) for s in state.seqs),
            cached_prompt_tokens=state.seqs[0].num_cached_prompt_tokens,
            scheduled_at=state.seqs[0].first_scheduled_at,
        )

    # ---- introspection ------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        prefix = self.kv_cache.prefix_stats
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            num_preemptions=self.scheduler.num_preemptions,
            num_steps=self.num_steps,
            kv_num_blocks=self.kv_cache.num_blocks,
            kv_num_free_blocks=self.kv_cache.num_free_blocks,
            kv_usage=self.kv_cache.usage,
            prefix_queried_tokens=prefix.queried_tokens,
            prefix_hit_tokens=prefix.hit_tokens,
            prefix_hit_rate=prefix.hit_rate,
            spec_drafted_tokens=self.scheduler.spec.num_drafted_tokens,
            spec_accepted_tokens=self.scheduler.spec.num_accepted_tokens,
            spec_verify_steps=self.scheduler.spec.num_verify_steps,
            num_waiting_above_batch=self.scheduler.waiting.num_at_or_above(Priority.CONVERSATIONAL),
        )
