"""`inferline edge`: the edge agent (verified OTA model updates, served on loopback without API keys)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inferline.cli.options import add_field, given, key_values
from inferline.edge.config import DEFAULT_LOW_CONFIDENCE, AgentConfig
from inferline.errors import InferlineError


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """The agent's settings; the ones not given keep AgentConfig's defaults."""
    values: dict[str, Any] = given(args, AgentConfig)
    if args.low_confidence_mean_logprob is not None:
        values["low_confidence_mean_logprob"] = _low_confidence(args.low_confidence_mean_logprob)
    labels = [pair.strip() for pair in (args.labels or "").split(",") if pair.strip()]
    values.update(
        registry_url=args.registry,
        labels=key_values(labels, "--labels", "ring=canary,site=lab"),
        trusted_root=Path(args.trusted_root),
        public_key=Path(args.pubkey),
        home=Path(args.home),
    )
    return AgentConfig(**values)


def _low_confidence(text: str) -> float | None:
    """`--low-confidence-mean-logprob`: a log-probability (≤ 0), or `off`."""
    if text.strip().lower() == "off":
        return None
    try:
        threshold = float(text)
    except ValueError:
        threshold = float("nan")
    if not threshold <= 0:  # NaN too
        raise InferlineError(
            f"--low-confidence-mean-logprob {text!r}: give a mean token log-probability ≤ 0 under which an "
            f"answer is flagged (e.g. {DEFAULT_LOW_CONFIDENCE}; 0 flags nearly every answer), or off"
        )
    return threshold


def _edge(args: argparse.Namespace) -> int:
    from inferline.edge.agent import run_agent
    from inferline.server.app import create_app
    from inferline.server.serve import is_loopback

    config = agent_config(args)
    if not is_loopback(config.host):
        raise InferlineError(
            f"--host {config.host}: the edge agent serves without API keys, so loopback only"
        )
    return run_agent(config, create_app)


def add_edge_parser(commands: Any) -> None:
    edge = commands.add_parser("edge", help="edge agent: verified OTA model updates, served on loopback")
    edge.add_argument("--registry", required=True, help="the registry's TUF repository URL")
    edge.add_argument("--device-id", required=True, help="this device's name in its reported state")
    edge.add_argument("--labels", help="rollout selectors KEY=VALUE[,...], e.g. ring=canary")
    edge.add_argument("--model", required=True, help="the model name to follow and serve")
    edge.add_argument("--trusted-root", required=True, help="root.json shipped with the device")
    edge.add_argument("--pubkey", required=True, help="the publisher's bundle-signing public key (PEM)")
    edge.add_argument("--home", required=True, help="folder for installed versions, state and caches")
    add_field(edge, AgentConfig, "host", help="loopback address to serve on")
    add_field(edge, AgentConfig, "port", type=int, help="port to serve on")
    add_field(edge, AgentConfig, "poll_s", type=float, help="seconds between registry checks")
    add_field(
        edge,
        AgentConfig,
        "low_confidence_mean_logprob",
        help="flag an answer, with its prompt, for the registry's dataset when its tokens' mean "
        "log-probability is below this (≤ 0), or off",
    )
    edge.set_defaults(handler=_edge)
