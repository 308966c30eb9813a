"""The edge agent's settings (`inferline edge`'s command line), apart from the agent so that reading
them imports neither the server nor the update machinery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_LOW_CONFIDENCE = -2.5
"""Mean token log-probability under which an answer is flagged: on average each token had a probability
under e^-2.5 ≈ 8 %, which small models reach when they ramble or guess."""


@dataclass(frozen=True)
class AgentConfig:
    """The `inferline edge` command line."""

    registry_url: str  # the registry's TUF repository, e.g. http://registry:8081
    device_id: str  # how this device names itself in its state
    labels: dict[str, str]  # rollout selectors, e.g. {"ring": "canary"}
    model: str  # the model name to follow and to serve
    trusted_root: Path  # the registry's root.json shipped with the device
    public_key: Path  # the publisher's bundle-signing public key (PEM)
    home: Path  # models, pointer, state, TUF cache and usage database
    host: str = "127.0.0.1"
    port: int = 8000
    poll_s: float = 30.0  # seconds between registry checks (and telemetry uploads)
    outbox_max_records: int = 100_000  # telemetry kept on disk while the registry is unreachable
    # Flag an answer (with its prompt) whose sampled tokens' mean log-probability is below this; None: never.
    low_confidence_mean_logprob: float | None = DEFAULT_LOW_CONFIDENCE
