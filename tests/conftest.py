import pytest

from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """The default chat model (SmolLM2-135M-Instruct), float32 on the CPU, loaded once per test run."""
    return load_model(EngineConfig(device="cpu", dtype="float32"))
