"""A GGUF's Q4_0, Q4_1 and Q8_0 blocks become int4/int8 layers as they are, holding exactly the file's
weights, Q/K un-permute and q|k|v fusion included."""

from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType

from inferline.layers.embedding import Int8Embedding
from inferline.layers.quant_linear import Int4Linear, Int8Linear
from inferline.models.block_weights import BlockWeight
from inferline.models.gguf_loader import load_gguf
from inferline.models.weights import build_model

from .tiny_gguf import random_hf_state_dict, write_tiny_gguf

Q = GGMLQuantizationType


@pytest.mark.parametrize(
    ("ggml_type", "mode", "arch"),
    [(Q.Q4_1, "int4", "llama"), (Q.Q4_0, "int4", "qwen2"), (Q.Q8_0, "int8", "llama")],
)
def test_kept_blocks_hold_exactly_the_files_weights(
    tmp_path: Path, ggml_type: Q, mode: str, arch: str
) -> None:
    hf = random_hf_state_dict(attention_bias=arch == "qwen2", tied=False)
    path = write_tiny_gguf(tmp_path / "tiny.gguf", arch, hf, quantized=ggml_type)
    as_float = load_gguf(path).state_dict
    kept = load_gguf(path, keep_blocks=mode).state_dict  # type: ignore[arg-type]

    q_proj = kept["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(q_proj, BlockWeight)
    assert q_proj.mode == mode
    # A Q8_0 embedding table is looked up from its blocks; any other stays float.
    assert isinstance(kept["model.embed_tokens.weight"], BlockWeight) == (ggml_type == Q.Q8_0)
    for name, weight in kept.items():
        expected = as_float[name]
        assert isinstance(expected, torch.Tensor)
        got = weight.dequantized() if isinstance(weight, BlockWeight) else weight
        assert torch.equal(got, expected), name


def test_model_built_from_blocks_runs_them_in_quantized_layers(tmp_path: Path) -> None:
    hf = random_hf_state_dict(attention_bias=True, tied=False)
    path = write_tiny_gguf(tmp_path / "tiny.gguf", "qwen2", hf, quantized=Q.Q4_1)
    kept = load_gguf(path, keep_blocks="int4")
    float_weights = load_gguf(path)
    model = build_model(kept.config, kept.state_dict, torch.bfloat16, torch.device("cpu"))
    qkv = model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, Int4Linear)
    assert qkv.bias is not None
    assert isinstance(model.layers[1].mlp.gate_up_proj, Int4Linear)
    # The untied vocabulary projection is Q4_1 in this file: the int4 layers keep it float for
    # quantize_linears to make int8, as they do with any 4-bit vocabulary projection.
    assert not isinstance(model.lm_head, Int8Linear | Int4Linear)
    expected = torch.cat(
        [float_weights.state_dict[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"]
    )
    assert torch.equal(qkv.dequantized(torch.float32), expected)

    reference = build_model(
        float_weights.config, float_weights.state_dict, torch.bfloat16, torch.device("cpu")
    )
    x = reference.embed_tokens(torch.tensor([5, 17, 40, 3]))
    want = reference.layers[0].self_attn.qkv_proj(x)
    # The int4 kernel quantizes activations to int8 per group of 32: close to the float model's matmul.
    assert ((qkv(x).float() - want.float()).norm() / want.float().norm()).item() < 0.02


def test_a_tied_q8_0_table_is_looked_up_and_projected_from_its_own_blocks(tmp_path: Path) -> None:
    hf = random_hf_state_dict(attention_bias=False, tied=True)
    path = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", hf, quantized=Q.Q8_0)
    kept = load_gguf(path, keep_blocks="int4")  # the int4 layers keep the vocabulary in int8
    assert isinstance(kept.state_dict["model.embed_tokens.weight"], BlockWeight)
    assert "lm_head.weight" not in kept.state_dict  # tied: the table's blocks are the projection's
    model = build_model(kept.config, kept.state_dict, torch.bfloat16, torch.device("cpu"))
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.embed_tokens, Int8Embedding)
    assert model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()  # one copy of the table
    table = load_gguf(path).state_dict["model.embed_tokens.weight"]
    # Exactly the file's table (float32), not a bfloat16 table quantized a second time ...
    assert torch.equal(model.lm_head.dequantized(torch.float32), table)
    # ... and each looked-up row is the widened table's row, to the bit.
    ids = torch.tensor([[0, 5, 17], [40, 3, 3]])
    assert torch.equal(model.embed_tokens(ids), table.bfloat16()[ids])
