import pytest

from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """The default chat model (SmolLM2-135M-Instruct), float32 on the CPU, loaded once per test run."""
    return load_model(EngineConfig(device="cpu", dtype="float32"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
