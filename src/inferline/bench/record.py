"""What one benchmark request did, as the client saw it: the input of every metric."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    """One request's timings; every time is a `time.perf_counter()` reading in seconds."""

    send_s: float
    """When the client started sending the request."""
    end_s: float
    """When the stream ended (`data: [DONE]`) or the error arrived."""
    token_times_s: list[float] = field(default_factory=list)
    """Arrival of every streamed chunk that carried output text; the first is the first token."""
    output_tokens: int = 0
    """Completion tokens from the server's usage, else the number of text chunks."""
    prompt_tokens: int | None = None
    """Prompt tokens from the server's usage; None when the server reported none."""
    error: str | None = None
    """Why the request failed, in words; None when it succeeded."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: send to the first chunk that carried text (None if none did)."""
        return self.token_times_s[0] - self.send_s if self.token_times_s else None

    @property
    def e2e_s(self) -> float:
        """End-to-end latency: send to the end of the stream."""
        return self.end_s - self.send_s
