"""Load a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) as float32 tensors.

Design note: names already are the engine's vocabulary, so this loader only maps config.json to a
`ModelConfig` (both transformers 4's `rope_theta`/`rope_scaling` and 5's `rope_parameters`),
picks the right safetensors files (the index's shards, never a stray `consolidated.safetensors`)
and casts every tensor to float32; the engine casts to its compute dtype later.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from inferline.errors import ModelLoadError
from inferline.models.config import ModelConfig
from inferline.models.loaded_weights import LoadedWeights
from inferline.models.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# config.json `architectures` entry -> ModelConfig.architecture
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_INDEX_FILE = "model.safetensors.index.json"


def load_hf_folder(path: Path) -> LoadedWeights:
    """Read a transformers-style folder into a config, float32 tensors and a tokenizer."""
    start_s = time.perf_counter()
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json; a Hugging Face model folder needs one")
    raw_config = json.loads(config_file.read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_hf_folder(path)
    state_dict = _read_safetensors(path)
    config = hf_config(raw_config, tokenizer, has_lm_head="lm_head.weight" in state_dict, name=path.name)
    if config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)  # some checkpoints save the tied copy too
    logger.info("loaded %s (%d tensors) in %.2f s", path, len(state_dict), time.perf_counter() - start_s)
    return LoadedWeights(config=config, state_dict=dict(state_dict), tokenizer=tokenizer)


def hf_config(raw: Mapping[str, Any], tokenizer: Tokenizer, has_lm_head: bool, name: str = "") -> ModelConfig:
    """Map config.json fields (with transformers' per-architecture defaults) to a ModelConfig."""
    architecture = _architecture(raw)
    hidden_size = int(raw["hidden_size"])
    num_heads = int(raw["num_attention_heads"])
    rope_theta, rope_scaling = _rope(raw)
    if raw.get("sliding_window") and raw.get("use_sliding_window", architecture == "mistral"):
        logger.warning(
            "%s: sliding-window attention (window %s) is not implemented; prompts longer than the "
            "window attend to all tokens",
            name,
            raw["sliding_window"],
        )
    return ModelConfig(
        architecture=architecture,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden_size,
        intermediate_size=int(raw["intermediate_size"]),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=num_heads,
        num_key_value_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        # A checkpoint without lm_head.weight can only mean tied embeddings, whatever config.json says.
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)) or not has_lm_head,
        # Qwen2 always has q/k/v biases; Llama has them when attention_bias is set.
        attention_bias=architecture == "qwen2" or bool(raw.get("attention_bias", False)),
        rope_scaling=rope_scaling,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=tokenizer.eos_token_ids,
        name=str(raw.get("_name_or_path") or name),
    )


def _architecture(raw: Mapping[str, Any]) -> str:
    names = raw.get("architectures") or []
    for hf_name in names:
        if hf_name in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[hf_name]
    raise ModelLoadError(
        f"config.json architectures {names} are not supported "
        f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
    )


def _rope(raw: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from transformers 5's `rope_parameters` or 4's two fields."""
    parameters = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_theta = float(parameters.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    if "type" in parameters and "rope_type" not in parameters:  # transformers 4's older spelling
        parameters["rope_type"] = parameters.pop("type")
    if parameters.get("rope_type", "default") == "default":
        return rope_theta, None
    return rope_theta, parameters


def _safetensors_files(path: Path) -> list[Path]:
    index_file = path / _INDEX_FILE
    if index_file.is_file():
        weight_map: dict[str, str] = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        return [path / shard for shard in sorted(set(weight_map.values()))]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    # Mistral's repositories also ship the original-format consolidated.safetensors: never mix it in.
    files = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("consolidated"))
    if not files:
        raise ModelLoadError(
            f"{path} has no *.safetensors weights (PyTorch .bin checkpoints are not supported; convert "
            "them with transformers: model.save_pretrained(folder, safe_serialization=True))"
        )
    return files


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    state_dict: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path):
        if not file.is_file():
            raise ModelLoadError(f"{file} is listed in {_INDEX_FILE} but missing (incomplete download?)")
        with safe_open(str(file), framework="pt") as shard:
            for name in shard.keys():  # noqa: SIM118 (safe_open is not iterable)
                if name.endswith("rotary_emb.inv_freq"):  # a buffer older checkpoints saved
                    continue
                state_dict[name] = shard.get_tensor(name).to(torch.float32)
    return state_dict
