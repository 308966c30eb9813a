"""Turn a checkpoint's Hugging Face-named tensors into a runnable LlamaForCausalLM.

The model is built on the meta device (no memory, no random init) and the checkpoint's tensors are
assigned in place, fused where the model fuses projections and cast to the compute dtype once.
"""

from __future__ import annotations

import torch

from inferline.errors import ModelLoadError
from inferline.models.config import ModelConfig
from inferline.models.llama import LlamaForCausalLM

_SUPPORTED_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2"})


def _take(state_dict: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return state_dict.pop(name)
    except KeyError:
        raise ModelLoadError(f"checkpoint is missing tensor {name!r}") from None


def fuse_checkpoint(config: ModelConfig, hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF tensors to this model's names, concatenating q|k|v and gate|up."""
    source = dict(hf_state_dict)
    fused: dict[str, torch.Tensor] = {
        "embed_tokens.weight": _take(source, "model.embed_tokens.weight"),
        "norm.weight": _take(source, "model.norm.weight"),
    }
    for i in range(config.num_hidden_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        attn = hf + "self_attn."
        fused[ours + "self_attn.qkv_proj.weight"] = torch.cat(
            [_take(source, attn + f"{p}_proj.weight") for p in "qkv"], dim=0
        )
        if config.attention_bias:
            fused[ours + "self_attn.qkv_proj.bias"] = torch.cat(
                [_take(source, attn + f"{p}_proj.bias") for p in "qkv"], dim=0
            )
        fused[ours + "self_attn.o_proj.weight"] = _take(source, attn + "o_proj.weight")
        fused[ours + "mlp.gate_up_proj.weight"] = torch.cat(
            [_take(source, hf + "mlp.gate_proj.weight"), _take(source, hf + "mlp.up_proj.weight")], dim=0
        )
        fused[ours + "mlp.down_proj.weight"] = _take(source, hf + "mlp.down_proj.weight")
        fused[ours + "input_layernorm.weight"] = _take(source, hf + "input_layernorm.weight")
        fused[ours + "post_attention_layernorm.weight"] = _take(
            source, hf + "post_attention_layernorm.weight"
        )
    lm_head = source.pop("lm_head.weight", None)
    if config.tie_word_embeddings or lm_head is None:
        lm_head = fused["embed_tokens.weight"]
    fused["lm_head.weight"] = lm_head
    source.pop("model.rotary_emb.inv_freq", None)
    unused = [name for name in source if not name.endswith("rotary_emb.inv_freq")]
    if unused:
        raise ModelLoadError(f"checkpoint has tensors this architecture does not use: {unused[:5]}")
    return fused


def build_model(
    config: ModelConfig, hf_state_dict: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device
) -> LlamaForCausalLM:
    """A model in eval mode on `device` in `dtype`, with the checkpoint's weights."""
    if config.architecture not in _SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"architecture {config.architecture!r} is not supported; supported: "
            f"{', '.join(sorted(_SUPPORTED_ARCHITECTURES))}"
        )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    tensors = fuse_checkpoint(config, hf_state_dict)
    cast = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items() if name != "lm_head.weight"}
    tied = tensors["lm_head.weight"] is tensors["embed_tokens.weight"]
    cast["lm_head.weight"] = (
        cast["embed_tokens.weight"] if tied else tensors["lm_head.weight"].to(device=device, dtype=dtype)
    )
    model.load_state_dict(cast, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.to(device)
    return model.eval().requires_grad_(False)
