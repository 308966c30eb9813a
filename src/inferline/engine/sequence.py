"""One completion being generated: its tokens and where it stands in the scheduler."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from inferline.types import Priority, Request, SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """Completion `index` of a request. With n > 1 a request has n sequences sharing its prompt."""

    seq_id: str
    request: Request
    index: int
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    """Tokens whose KV is in the cache; reset to 0 when the sequence is preempted."""
    num_cached_prompt_tokens: int = 0
    """Prompt tokens taken from the prefix cache at first admission."""
    num_preemptions: int = 0
    first_scheduled_at: float | None = None
    """Monotonic seconds when the scheduler first gave this completion a step."""
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.request.prompt_token_ids

    @property
    def sampling(self) -> SamplingParams:
        return self.request.sampling

    @property
    def priority(self) -> Priority:
        return self.request.priority

    @property
    def tenant(self) -> str:
        return self.request.tenant

    @property
    def num_tokens(self) -> int:
        return len(self.request.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.request.prompt_token_ids + self.output_token_ids

    def token_ids_between(self, start: int, end: int) -> list[int]:
        prompt = self.request.prompt_token_ids
        if end <= len(prompt):
            return prompt[start:end]
        return self.all_token_ids[start:end]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
