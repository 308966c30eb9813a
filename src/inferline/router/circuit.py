"""A circuit breaker per deployment: closed → open after N failures in a window → half-open probe.

Every path that sends a request to a deployment (the policy's pick, a fallback, a retry, a cascade
stage, a degradation target) asks `enter()` first, so no path can skip an open breaker. In half-open
exactly one probe is in flight; its outcome closes the breaker or opens it for another cooldown, and
only the attempt that holds the probe may release it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from inferline.config import CircuitBreakerConfig

CircuitState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, config: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.failures: deque[float] = deque()
        self.opened_at: float | None = None
        self.probe_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> CircuitState:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.config.cooldown_s:
            return "half_open"
        return "open"

    def retry_after_s(self) -> float:
        """Seconds until a probe may be sent; 0 when requests may go now."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.config.cooldown_s - self.clock())

    def enter(self) -> bool | None:
        """Let a request through: None when the circuit refuses it; otherwise whether it is the half-open
        probe, which its attempt must end with record_success, record_failure or release_probe."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return None

    def record_success(self) -> None:
        self.failures.clear()
        self.opened_at = None
        self.probe_in_flight = False

    def record_failure(self) -> None:
        now = self.clock()
        if self.probe_in_flight or self.opened_at is not None:  # the probe failed: another cooldown
            self._open(now)
            return
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.config.window_s:
            self.failures.popleft()
        if len(self.failures) >= self.config.failure_threshold:
            self._open(now)

    def release_probe(self) -> None:
        """The probe ended without a verdict on the deployment (the client's own error, or it left)."""
        self.probe_in_flight = False

    def _open(self, now: float) -> None:
        self.opened_at = now
        self.probe_in_flight = False
        self.failures.clear()
        self.times_opened += 1
