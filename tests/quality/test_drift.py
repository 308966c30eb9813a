"""Drift monitors on seeded streams: quiet while traffic looks like the reference, firing on the signals
that moved when it does not; prompts' MiniLM embeddings; OIP features; and /v1/drift with its gauges."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from inferline.config import DriftConfig, ServerConfig
from inferline.quality.capture import PayloadCapture
from inferline.quality.capture_store import CaptureStore
from inferline.quality.domain_classifier import classifier_auc, roc_auc
from inferline.quality.drift import DriftMonitor, Signal
from inferline.quality.drift_stats import cohens_d, psi, total_variation, wasserstein
from inferline.quality.exchange import Exchange, oip_features
from inferline.router.deployments import DeploymentPool
from inferline.runners.embedding import EmbeddingRunner
from inferline.server.app import create_app
from inferline.testing.stub_upstream import StubProcess, start_stub
from inferline.types import UsageRecord
from tests.server.conftest import API_KEY

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "inferline-quality-rules.yml"
COOKING = ["How long do I boil an egg?", "Best way to caramelise onions?", "What is a roux?"]
DATABASES = ["How do I index a Postgres table?", "What is a B-tree?", "Why is my SQL join slow?"]


def is_refusal(text: str) -> bool:
    return text.startswith("I'm sorry")


def exchange(
    rng: random.Random,
    *,
    prompt_mean: float = 40,
    refusal_rate: float = 0.02,
    length_share: float = 0.1,
    logprob_mean: float = -0.4,
    prompts: list[str] = COOKING,
    features: dict[str, list[float]] | None = None,
) -> Exchange:
    refused = rng.random() < refusal_rate
    usage = UsageRecord(
        request_id=f"r{rng.random()}",
        tenant="alpha",
        route="chat",
        deployment="small",
        model_version="1",
        prompt_tokens=max(1, int(rng.gauss(prompt_mean, 8))),
        completion_tokens=max(1, int(rng.gauss(60, 15))),
        ttft_s=0.01,
        latency_s=0.1,
        outcome="ok",
        mean_logprob=rng.gauss(logprob_mean, 0.1),
    )
    return Exchange(
        usage,
        [{"role": "user", "content": rng.choice(prompts) + f" ({rng.randint(0, 999)})"}],
        ["I'm sorry, I cannot." if refused else "Sure: here it is."],
        ["length" if rng.random() < length_share else "stop"],
        features=features or {},
    )


def fed(config: DriftConfig, seed: int, **current: object) -> DriftMonitor:
    rng = random.Random(seed)
    monitor = DriftMonitor(config, is_refusal)
    for _ in range(config.window):
        monitor.observe(exchange(rng))
    for _ in range(config.window):
        monitor.observe(exchange(rng, **current))  # type: ignore[arg-type]
    return monitor


def alerts(monitor: DriftMonitor) -> set[str]:
    [report] = monitor.reports()
    assert report.signals, report
    return {signal.metric for signal in report.signals if signal.alert}


CONFIG = DriftConfig(enabled=True, window=300, min_samples=50)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quiet_on_a_stream_like_the_reference(seed: int) -> None:
    assert alerts(fed(CONFIG, seed)) == set()


def test_fires_on_the_signals_that_moved() -> None:
    shifted = fed(CONFIG, 1, prompt_mean=80, refusal_rate=0.3, length_share=0.5, logprob_mean=-1.2)
    assert alerts(shifted) == {"prompt_tokens", "refusal_rate", "finish_reason_mix", "mean_logprob"}
    only_refusals = fed(CONFIG, 2, refusal_rate=0.3)
    assert alerts(only_refusals) == {"refusal_rate"}


def test_a_new_model_version_starts_its_own_reference() -> None:
    monitor = fed(CONFIG, 4)
    rng = random.Random(5)
    newer = exchange(rng, prompt_mean=200)
    newer.usage.model_version = "2"
    monitor.observe(newer)
    assert [(r.model_version, r.num_reference, r.signals) for r in monitor.reports()][1] == ("2", 1, [])


def test_oip_features_psi_and_wasserstein() -> None:
    config = DriftConfig(enabled=True, window=200, min_samples=50)
    draws = np.random.default_rng(7)

    def stream(shift: float) -> Iterator[dict[str, list[float]]]:
        while True:
            rows = [[draws.normal(0, 1), draws.normal(5 + shift, 2)] for _ in range(4)]
            yield oip_features([{"name": "x", "shape": [4, 2], "datatype": "FP32", "data": rows}])

    for shift, expected in ((0.0, set()), (2.0, {"psi:x[1]", "wasserstein:x[1]"})):
        rng, features = random.Random(8), stream(shift)
        monitor = DriftMonitor(config, is_refusal)
        for _ in range(config.window):
            monitor.observe(exchange(rng, features=next(stream(0.0))))
        for _ in range(config.window):
            monitor.observe(exchange(rng, features=next(features)))
        assert alerts(monitor) == expected


def test_embedding_drift_on_minilm_vectors(minilm_runner: EmbeddingRunner) -> None:
    config = DriftConfig(enabled=True, window=40, min_samples=20, max_embedded_prompts=40)

    async def embed(texts: list[str]) -> np.ndarray:
        return minilm_runner.embed(texts).vectors

    def embedding_signals(prompts: list[str]) -> dict[str, Signal]:
        monitor = fed(config, 9, prompts=prompts)
        asyncio.run(monitor.embed_prompts(embed))
        [report] = monitor.reports()
        return {s.metric: s for s in report.signals if s.metric.startswith("embedding_")}

    same, shifted = embedding_signals(COOKING), embedding_signals(DATABASES)
    assert {m for m, s in same.items() if s.alert} == set()
    assert {m for m, s in shifted.items() if s.alert} == {"embedding_mmd2", "embedding_auc"}
    assert same["embedding_auc"].value < 0.65
    assert shifted["embedding_auc"].value > 0.95


def test_domain_classifier_auc_tells_shifted_vectors_apart_and_no_others() -> None:
    threshold = DriftConfig().max_classifier_auc
    for seed in (1, 2, 3):
        draws = np.random.default_rng(seed)
        reference = draws.normal(size=(100, 48))
        assert classifier_auc(reference, draws.normal(size=(100, 48))) < threshold, seed
        moved = draws.normal(size=(100, 48))
        moved[:, :4] += 1.0  # a new topic: a few directions shift, the rest stay
        auc = classifier_auc(reference, moved)
        assert auc > threshold, seed
        assert classifier_auc(reference, moved) == auc  # seeded folds: the same windows, the same gauge


def test_effect_sizes_have_their_textbook_values() -> None:
    assert cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(1.0)
    assert total_variation(["stop", "stop"], ["stop", "length"]) == pytest.approx(0.5)
    assert wasserstein([0.0, 0.0], [1.0, 1.0]) == pytest.approx(1.0)
    assert wasserstein([0.0, 1.0, 3.0], [5.0, 6.0, 8.0]) == pytest.approx(5.0)
    same = np.random.default_rng(0).normal(size=1000)
    assert psi(same, same) == pytest.approx(0.0)
    labels, scores = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.3])
    assert roc_auc(labels, scores) == pytest.approx(5 / 6)  # 7.5 of 9 pairs, the tie counting half


@pytest.fixture(scope="module")
def stub() -> Iterator[StubProcess]:
    process = start_stub("--reply", "fine thanks", "--tokens", "2")
    yield process
    process.stop()


def test_drift_endpoint_and_gauges(tmp_path: Path, stub: StubProcess) -> None:
    admin = "sk-drift-admin"
    config = ServerConfig.model_validate(
        {
            "admin_api_keys": [admin],
            "tenants": [{"name": "alpha", "api_keys": [API_KEY]}],
            "deployments": [{"name": "stubbed", "kind": "remote", "base_url": f"{stub.url}/v1"}],
            "telemetry": {"metering": False, "database_url": f"sqlite:///{tmp_path / 'inferline.db'}"},
            "quality": {"drift": {"enabled": True, "window": 20, "min_samples": 10}},
        }
    )

    async def go() -> tuple[dict[str, object], str, int]:
        pool = DeploymentPool(config.deployments)
        await pool.load_all()
        app = create_app(config, pool)
        transport = httpx.ASGITransport(app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://inferline") as client:
                for words in [3] * 20 + [40] * 20:  # the prompts grow long after the reference
                    body = {"model": "stubbed", "messages": [{"role": "user", "content": "word " * words}]}
                    headers = {"authorization": f"Bearer {API_KEY}"}
                    assert (await client.post("/v1/chat/completions", json=body, headers=headers)).is_success
                drift = (await client.get("/v1/drift", headers={"authorization": f"Bearer {admin}"})).json()
                metrics = (await client.get("/metrics")).text
                denied = (
                    await client.get("/v1/drift", headers={"authorization": f"Bearer {API_KEY}"})
                ).status_code
                return drift, metrics, denied
        finally:
            await pool.unload_all()

    drift, metrics, denied = asyncio.run(go())
    [route] = drift["routes"]  # type: ignore[index]
    signals = {s["metric"]: s for s in route["signals"]}
    assert signals["prompt_tokens"]["alert"] is True
    assert signals["finish_reason_mix"]["alert"] is False
    assert 'inferline_drift_alert{metric="prompt_tokens",model_version="1",route="stubbed"} 1.0' in metrics
    assert denied in (401, 403)
    rules = yaml.safe_load(RULES.read_text())
    exprs = " ".join(rule["expr"] for group in rules["groups"] for rule in group["rules"])
    assert "inferline_drift_alert" in exprs
    assert "inferline_drift_effect_size" in exprs
    assert "embedding_auc" in exprs


def test_refusals_count_by_the_configured_patterns(tmp_path: Path) -> None:
    capture = PayloadCapture(ServerConfig(deployments=[]).quality.capture, CaptureStore("sqlite://"))
    assert capture.is_refusal("I'm sorry, but I can't help with that.")
    assert capture.is_refusal("I cannot do that.")
    assert not capture.is_refusal("Sorting is O(n log n); I can show you.")
