"""One entry point from a model name or path to loaded weights, whatever the file format."""

from __future__ import annotations

from inferline.errors import ModelLoadError
from inferline.models.block_weights import BlockMode
from inferline.models.gguf_loader import load_gguf_file
from inferline.models.hf_loader import load_hf_folder
from inferline.models.loaded_weights import LoadedWeights
from inferline.models.store import ModelSource, resolve

__all__ = ["LoadedWeights", "load_source", "load_weights"]


def load_weights(name_or_path: str) -> LoadedWeights:
    """Resolve `name_or_path` in the model store (built-in name, path, or $INFERLINE_HOME/models
    entry) and load it as float; raises ModelNotFoundError or ModelLoadError with the fix in the message."""
    return load_source(resolve(name_or_path))


def load_source(source: ModelSource, keep_blocks: BlockMode | None = None) -> LoadedWeights:
    """Load an already-resolved model; `keep_blocks`: see load_gguf (Hugging Face folders are float)."""
    if source.kind == "embedding":
        raise ModelLoadError(
            f"{source.name!r} is an embedding model (a sentence-transformers folder), not a chat model; "
            "serve it as a deployment of kind 'embedding'"
        )
    weights = (
        load_gguf_file(source.gguf, keep_blocks) if source.kind == "gguf" else load_hf_folder(source.path)
    )
    if not weights.config.name:
        weights.config.name = source.name
    return weights
