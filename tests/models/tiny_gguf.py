"""Write tiny GGUF files the way llama.cpp's converter does, for tests that need known weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from inferline.models.tokenizer import _BYTE_LEVEL

HIDDEN = 64
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = HIDDEN // NUM_HEADS
INTERMEDIATE = 128
NUM_LAYERS = 2
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Byte-level alphabet in byte order, then a few merges' results.
BYTE_TOKENS = sorted(_BYTE_LEVEL, key=_BYTE_LEVEL.__getitem__)
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
TOKENS = SPECIAL_TOKENS + BYTE_TOKENS + [merge.replace(" ", "") for merge in MERGES]
VOCAB_SIZE = len(TOKENS)

_HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def random_hf_state_dict(attention_bias: bool, tied: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """HF-named float32 tensors of a tiny Llama-family model."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    sd = {"model.embed_tokens.weight": rand(VOCAB_SIZE, HIDDEN), "model.norm.weight": rand(HIDDEN)}
    if not tied:
        sd["lm_head.weight"] = rand(VOCAB_SIZE, HIDDEN)
    kv = NUM_KV_HEADS * HEAD_DIM
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = rand(HIDDEN)
        sd[p + "post_attention_layernorm.weight"] = rand(HIDDEN)
        sd[p + "self_attn.q_proj.weight"] = rand(HIDDEN, HIDDEN)
        sd[p + "self_attn.k_proj.weight"] = rand(kv, HIDDEN)
        sd[p + "self_attn.v_proj.weight"] = rand(kv, HIDDEN)
        sd[p + "self_attn.o_proj.weight"] = rand(HIDDEN, HIDDEN)
        sd[p + "mlp.gate_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        sd[p + "mlp.up_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        sd[p + "mlp.down_proj.weight"] = rand(HIDDEN, INTERMEDIATE)
        if attention_bias:
            sd[p + "self_attn.q_proj.bias"] = rand(HIDDEN)
            sd[p + "self_attn.k_proj.bias"] = rand(kv)
            sd[p + "self_attn.v_proj.bias"] = rand(kv)
    return sd


def gguf_name(hf_name: str) -> str:
    if hf_name in _HF_TO_GGUF:
        return _HF_TO_GGUF[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_LAYER[rest]}"


def llama_cpp_permute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to Q/K rows of llama models: rotate-half -> interleaved."""
    head_dim = weight.shape[0] // num_heads
    return (
        weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
    )


def write_tiny_gguf(
    path: Path,
    arch: str,
    hf_state_dict: dict[str, torch.Tensor],
    quantized: GGMLQuantizationType = GGMLQuantizationType.F32,
    rope_freqs: torch.Tensor | None = None,
) -> Path:
    """A GGUF file of `hf_state_dict`, converted as llama.cpp would (2-D weights in `quantized`)."""
    writer = GGUFWriter(path, arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(NUM_LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(NUM_HEADS)
    writer.add_head_count_kv(NUM_KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3] * len(SPECIAL_TOKENS) + [1] * (VOCAB_SIZE - len(SPECIAL_TOKENS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    for name, tensor in hf_state_dict.items():
        if arch == "llama" and ".q_proj." in name:
            tensor = llama_cpp_permute(tensor, NUM_HEADS)
        elif arch == "llama" and ".k_proj." in name:
            tensor = llama_cpp_permute(tensor, NUM_KV_HEADS)
        array = tensor.numpy().astype(np.float32)
        if array.ndim == 2 and quantized != GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name(name), quantize(array, quantized), raw_dtype=quantized)
        else:
            writer.add_tensor(gguf_name(name), array)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
