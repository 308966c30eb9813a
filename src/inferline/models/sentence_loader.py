"""Load a sentence-transformers folder (all-MiniLM-L6-v2 and kin) into a BertModel and its settings.

Design note: a sentence-transformers model is a pipeline written down in modules.json: a Transformer
(config.json, model.safetensors, tokenizer.json, sentence_bert_config.json), a Pooling module
(1_Pooling/config.json) and optionally Normalize. We read those files directly and never import
sentence-transformers or transformers. Two details matter for parity with sentence-transformers:
its `max_seq_length` (256 for MiniLM) overrides the truncation and the fixed padding that
tokenizer.json carries (128 for MiniLM), and checkpoints may prefix every tensor name with `bert.`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from inferline.errors import ModelLoadError
from inferline.models.bert import BertConfig, BertModel
from inferline.models.tokenizer import read_tokenizer_json

logger = logging.getLogger(__name__)

PoolingMode = Literal["mean", "cls"]

_GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
_POOLING_MODES: dict[str, PoolingMode] = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
# Checkpoint module (under encoder.layer.N.) -> BertLayer module.
_LAYER_MODULES = {
    "attention.output.dense": "attention.o_proj",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj",
    "output.LayerNorm": "mlp_norm",
}
_LAYER_NAME = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)")
_QKV = ("query", "key", "value")
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass
class SentenceModel:
    """Everything needed to turn texts into sentence embeddings."""

    name: str
    model: BertModel
    """float32, eval mode, on the CPU."""
    tokenizer: Tokenizer
    """Truncates to max_seq_length and pads each batch to its longest text."""
    max_seq_length: int
    """Longest input in tokens, [CLS] and [SEP] included; longer texts are truncated."""
    pooling: PoolingMode
    """How token embeddings become one vector: mean over real tokens, or the [CLS] token's."""
    normalize: bool
    """L2-normalise the pooled vectors (modules.json lists a Normalize module)."""

    @property
    def embedding_dim(self) -> int:
        return self.model.config.hidden_size


def load_sentence_model(path: Path) -> SentenceModel:
    """Read a sentence-transformers folder (or a plain BERT folder: mean pooling, no normalisation)."""
    start_s = time.perf_counter()
    path = Path(path)
    modules = _read_modules(path)
    transformer_dir = path / modules.get("Transformer", "")
    raw_config = _read_json(transformer_dir / "config.json", required=True)
    config = bert_config(raw_config, transformer_dir)
    max_seq_length = min(
        int(_read_json(transformer_dir / "sentence_bert_config.json").get("max_seq_length") or 1 << 30),
        config.max_position_embeddings,
    )
    pooling_dir = path / modules["Pooling"] if "Pooling" in modules else path / "1_Pooling"
    model = SentenceModel(
        name=path.resolve().name,
        model=_load_bert(transformer_dir, config),
        tokenizer=_load_tokenizer(transformer_dir, max_seq_length, int(raw_config.get("pad_token_id") or 0)),
        max_seq_length=max_seq_length,
        pooling=_pooling_mode(pooling_dir / "config.json"),
        normalize="Normalize" in modules,
    )
    logger.info("loaded embedding model %s in %.2f s", path, time.perf_counter() - start_s)
    return model


def bert_config(raw: Mapping[str, Any], path: Path) -> BertConfig:
    """Map a transformers BERT config.json to a BertConfig; refuse what BertModel does not implement."""
    if raw.get("model_type") != "bert":
        raise ModelLoadError(
            f"{path}/config.json has model_type {raw.get('model_type')!r}; embedding models must be BERT "
            "encoders (model_type 'bert', e.g. all-MiniLM-L6-v2, BGE, E5)"
        )
    activation = raw.get("hidden_act", "gelu")
    if activation not in _GELU_APPROXIMATIONS:
        raise ModelLoadError(
            f"{path}: hidden_act {activation!r} is not supported; "
            f"supported: {', '.join(_GELU_APPROXIMATIONS)}"
        )
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(
            f"{path}: position_embedding_type {raw['position_embedding_type']!r} is not supported "
            "(only 'absolute')"
        )
    return BertConfig(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=int(raw["num_attention_heads"]),
        intermediate_size=int(raw["intermediate_size"]),
        max_position_embeddings=int(raw["max_position_embeddings"]),
        type_vocab_size=int(raw.get("type_vocab_size", 2)),
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        gelu_approximate=_GELU_APPROXIMATIONS[activation],
    )


def bert_state_dict(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers BERT checkpoint to BertModel's names and fuse q, k, v per layer.

    Unknown names pass through unchanged so that `load_state_dict(strict=True)` reports them.
    """
    state_dict: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for raw_name, tensor in checkpoint.items():
        name = raw_name.removeprefix("bert.")
        if name.startswith(_IGNORED_PREFIXES):
            continue
        match = _LAYER_NAME.fullmatch(name)
        if match is None:
            state_dict[_embedding_name(name)] = tensor
            continue
        layer, module, param = (
            int(match[1]),
            match[2],
            {"gamma": "weight", "beta": "bias"}.get(match[3], match[3]),
        )
        projection = module.removeprefix("attention.self.")
        if projection in _QKV:
            qkv_parts.setdefault((layer, param), {})[projection] = tensor
        else:
            state_dict[f"layers.{layer}.{_LAYER_MODULES.get(module, module)}.{param}"] = tensor
    for (layer, param), parts in qkv_parts.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise ModelLoadError(f"layer {layer} has no attention.self.{missing[0]}.{param} tensor")
        state_dict[f"layers.{layer}.attention.qkv_proj.{param}"] = torch.cat([parts[p] for p in _QKV])
    return state_dict


def _embedding_name(name: str) -> str:
    name = name.replace("embeddings.LayerNorm.", "embeddings.norm.")
    return name.replace(".gamma", ".weight").replace(".beta", ".bias")


def _load_bert(path: Path, config: BertConfig) -> BertModel:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no *.safetensors file; save the model with safe_serialization=True")
    checkpoint: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            checkpoint.update({name: f.get_tensor(name).float() for name in f.keys()})  # noqa: SIM118
    # Built on the meta device: the checkpoint's tensors become the parameters, nothing is initialised twice.
    with torch.device("meta"):
        model = BertModel(config)
    try:
        model.load_state_dict(bert_state_dict(checkpoint), strict=True, assign=True)
    except RuntimeError as error:
        raise ModelLoadError(f"{path}: the checkpoint does not fit a BERT encoder: {error}") from None
    return model.eval()


def _load_tokenizer(path: Path, max_seq_length: int, pad_token_id: int) -> Tokenizer:
    tokenizer = read_tokenizer_json(path)
    padding = tokenizer.padding or {}
    pad_id = int(padding.get("pad_id", pad_token_id))
    pad_token = padding.get("pad_token") or tokenizer.id_to_token(pad_id) or "[PAD]"
    # tokenizer.json's own settings (MiniLM: truncate at 128, pad every input to 128) are not what
    # sentence-transformers runs: it truncates at max_seq_length and pads to the batch's longest text.
    tokenizer.enable_truncation(max_length=max_seq_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def _read_modules(path: Path) -> dict[str, str]:
    """modules.json as {"Transformer": subfolder, "Pooling": subfolder, "Normalize": subfolder}."""
    modules: dict[str, str] = {}
    for entry in _read_json_list(path / "modules.json"):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _KNOWN_MODULES:
            raise ModelLoadError(
                f"{path}/modules.json lists a {entry.get('type')!r} module; inferline runs only "
                f"{', '.join(_KNOWN_MODULES)} pipelines"
            )
        modules[kind] = str(entry.get("path", ""))
    return modules


def _pooling_mode(config_file: Path) -> PoolingMode:
    raw = _read_json(config_file)
    if not raw:
        return "mean"  # sentence-transformers' default for a bare transformer folder
    enabled = [key for key, value in raw.items() if key.startswith("pooling_mode_") and value is True]
    if len(enabled) != 1 or enabled[0] not in _POOLING_MODES:
        raise ModelLoadError(
            f"{config_file} enables pooling {enabled}; inferline supports exactly one of "
            f"{', '.join(_POOLING_MODES)}"
        )
    return _POOLING_MODES[enabled[0]]


def _read_json(path: Path, required: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path} does not exist; an embedding model folder needs it")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return value


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ModelLoadError(f"{path} must hold a JSON list of modules")
    return value
