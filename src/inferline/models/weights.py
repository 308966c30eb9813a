"""Turn a checkpoint's Hugging Face-named tensors into a runnable LlamaForCausalLM.

The model is built on the meta device (no memory, no random init) and the checkpoint's tensors are
assigned in place, fused where the model fuses projections and cast to the compute dtype once.
Weights that arrive as quantized blocks (a GGUF run in its own format) become quantized layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from inferline.errors import ModelLoadError
from inferline.models.block_weights import BlockWeight, concat_rows
from inferline.models.config import ModelConfig
from inferline.models.llama import LlamaForCausalLM

Weight = torch.Tensor | BlockWeight

_SUPPORTED_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2"})


def _take(state_dict: dict[str, Weight], name: str) -> Weight:
    try:
        return state_dict.pop(name)
    except KeyError:
        raise ModelLoadError(f"checkpoint is missing tensor {name!r}") from None


def _float(weight: Weight) -> torch.Tensor:
    return weight.dequantized() if isinstance(weight, BlockWeight) else weight


def _concat_rows(parts: Sequence[Weight]) -> Weight:
    """Stack along the output dimension; in blocks when all parts share a block mode, else in float."""
    blocks = [part for part in parts if isinstance(part, BlockWeight)]
    if len(blocks) == len(parts) and len({part.mode for part in blocks}) == 1:
        return concat_rows(blocks)
    return torch.cat([_float(part) for part in parts], dim=0)


def fuse_checkpoint(config: ModelConfig, hf_state_dict: Mapping[str, Weight]) -> dict[str, Weight]:
    """Rename HF tensors to this model's names, concatenating q|k|v and gate|up."""
    source = dict(hf_state_dict)
    fused: dict[str, Weight] = {
        "embed_tokens.weight": _take(source, "model.embed_tokens.weight"),
        "norm.weight": _take(source, "model.norm.weight"),
    }
    for i in range(config.num_hidden_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        attn = hf + "self_attn."
        fused[ours + "self_attn.qkv_proj.weight"] = _concat_rows(
            [_take(source, attn + f"{p}_proj.weight") for p in "qkv"]
        )
        if config.attention_bias:
            fused[ours + "self_attn.qkv_proj.bias"] = _concat_rows(
                [_take(source, attn + f"{p}_proj.bias") for p in "qkv"]
            )
        fused[ours + "self_attn.o_proj.weight"] = _take(source, attn + "o_proj.weight")
        fused[ours + "mlp.gate_up_proj.weight"] = _concat_rows(
            [_take(source, hf + "mlp.gate_proj.weight"), _take(source, hf + "mlp.up_proj.weight")]
        )
        fused[ours + "mlp.down_proj.weight"] = _take(source, hf + "mlp.down_proj.weight")
        fused[ours + "input_layernorm.weight"] = _take(source, hf + "input_layernorm.weight")
        fused[ours + "post_attention_layernorm.weight"] = _take(
            source, hf + "post_attention_layernorm.weight"
        )
    lm_head = source.pop("lm_head.weight", None)
    # A tied projection may come as blocks of the embedding table (a GGUF with kept blocks).
    if lm_head is None or (config.tie_word_embeddings and not isinstance(lm_head, BlockWeight)):
        lm_head = fused["embed_tokens.weight"]
    fused["lm_head.weight"] = lm_head
    source.pop("model.rotary_emb.inv_freq", None)
    unused = [name for name in source if not name.endswith("rotary_emb.inv_freq")]
    if unused:
        raise ModelLoadError(f"checkpoint has tensors this architecture does not use: {unused[:5]}")
    return fused


def build_model(
    config: ModelConfig, hf_state_dict: Mapping[str, Weight], dtype: torch.dtype, device: torch.device
) -> LlamaForCausalLM:
    """A model in eval mode on `device` in `dtype`, with the checkpoint's weights."""
    if config.architecture not in _SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"architecture {config.architecture!r} is not supported; supported: "
            f"{', '.join(sorted(_SUPPORTED_ARCHITECTURES))}"
        )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    tensors, installed = _install_block_layers(model, fuse_checkpoint(config, hf_state_dict), dtype)
    cast = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items() if name != "lm_head.weight"}
    tied = "lm_head.weight" in tensors and tensors["lm_head.weight"] is tensors.get("embed_tokens.weight")
    if "lm_head.weight" in tensors:
        cast["lm_head.weight"] = (
            cast["embed_tokens.weight"] if tied else tensors["lm_head.weight"].to(device=device, dtype=dtype)
        )
    model.load_state_dict(cast | installed, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.to(device)
    return model.eval().requires_grad_(False)


def _install_block_layers(
    model: LlamaForCausalLM, weights: dict[str, Weight], dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Put a quantized layer wherever a weight came as blocks. Returns the float tensors still to
    load, and the installed layers' own tensors (so the strict load sees every parameter).

    The blocks are the layers' storage already: they stay on the CPU in their own format (the
    quantized layers are CPU-only).
    """
    installed: dict[str, torch.Tensor] = {}
    modules = {name.removesuffix(".weight") for name, w in weights.items() if isinstance(w, BlockWeight)}
    for module_name in modules:
        blocks, bias = weights[module_name + ".weight"], weights.get(module_name + ".bias")
        assert isinstance(blocks, BlockWeight)
        layer: torch.nn.Module
        if module_name == "embed_tokens":
            layer = blocks.embedding(dtype)
        else:
            layer = blocks.layer(None if bias is None else _float(bias).to(dtype))
        parent, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
        installed.update({f"{module_name}.{key}": value for key, value in layer.state_dict().items()})
    remaining = {name: _float(w) for name, w in weights.items() if name.rpartition(".")[0] not in modules}
    return remaining, installed
