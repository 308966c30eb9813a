"""GGUF loading: the default model's config, the reader, dequantization, names and the Q/K un-permute."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as numpy_dequantize
from gguf.quants import quantize

from inferline.errors import ModelLoadError
from inferline.models.dequant import dequantize
from inferline.models.gguf_file import GGUFFile, read_gguf
from inferline.models.gguf_loader import (
    hf_tensor_name,
    llama3_rope_divisors,
    load_gguf,
    unpermute_rotary,
)
from inferline.models.loaded_weights import LoadedWeights
from inferline.models.reference import transformers_model

from .tiny_gguf import llama_cpp_permute, random_hf_state_dict, write_tiny_gguf

Q = GGMLQuantizationType


@pytest.fixture(scope="module")
def loaded(default_gguf_path: Path) -> LoadedWeights:
    start = time.perf_counter()
    weights = load_gguf(default_gguf_path)
    print(f"\nload_gguf(default model: weights + tokenizer): {time.perf_counter() - start:.2f} s")
    return weights


def test_default_model_config(loaded: LoadedWeights) -> None:
    c = loaded.config
    assert c.architecture == "llama"
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (30, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (9, 3, 64)
    assert c.vocab_size == 49152
    assert c.tie_word_embeddings is True
    assert c.attention_bias is False
    assert c.rope_theta == 100000.0
    assert c.rms_norm_eps == 1e-5
    assert c.max_position_embeddings == 8192
    assert c.rope_scaling is None
    assert c.bos_token_id == 1
    assert c.eos_token_ids == [2]
    assert c.name


def test_default_model_state_dict(loaded: LoadedWeights) -> None:
    sd = loaded.state_dict
    assert len(sd) == 2 + 30 * 9  # embeddings + final norm, 9 tensors per layer, no lm_head (tied)
    assert "lm_head.weight" not in sd
    assert all(t.dtype == torch.float32 for t in sd.values())
    assert sd["model.embed_tokens.weight"].shape == (49152, 576)
    assert sd["model.layers.29.self_attn.k_proj.weight"].shape == (192, 576)
    assert sd["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert all(torch.isfinite(t).all() for t in sd.values())


def test_un_permuted_weights_make_transformers_answer_paris(loaded: LoadedWeights) -> None:
    """A wrong Q/K permutation still runs but produces nonsense; right weights know Paris."""
    pytest.importorskip("transformers")
    model = transformers_model(loaded)
    prompt = loaded.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
    answer = loaded.tokenizer.decode(out[0, len(prompt) :].tolist())
    assert "Paris" in answer, answer


def test_reader_matches_gguf_reader(default_gguf: GGUFFile, default_gguf_path: Path) -> None:
    reference = GGUFReader(default_gguf_path)
    for key, field in reference.fields.items():
        if key.startswith("GGUF."):
            continue
        assert default_gguf.metadata[key] == pytest.approx(field.contents()), key
    assert list(default_gguf.tensors) == [t.name for t in reference.tensors]
    for tensor in reference.tensors:
        ours = default_gguf.tensors[tensor.name]
        assert ours.ggml_type == tensor.tensor_type
        assert ours.shape == tuple(int(d) for d in tensor.shape)
        assert np.array_equal(ours.data.reshape(-1), np.asarray(tensor.data).reshape(-1).view(np.uint8))


def _random_blocks(ggml_type: GGMLQuantizationType, num_values: int, rng: np.random.Generator) -> np.ndarray:
    """Random quantized bytes, with the float16 scale fields set to sane values (not NaN/inf)."""
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    num_blocks = num_values // block_size
    if ggml_type == Q.F32:
        return rng.normal(size=num_values).astype(np.float32).view(np.uint8)
    if ggml_type == Q.F16:
        return rng.normal(size=num_values).astype(np.float16).view(np.uint8)
    if ggml_type == Q.BF16:
        high_halves = rng.normal(size=num_values).astype(np.float32).view(np.uint32) >> 16
        return high_halves.astype(np.uint16).view(np.uint8)
    blocks = rng.integers(0, 256, size=(num_blocks, type_size), dtype=np.uint8)
    half_offsets = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q4_K: [0, 2], Q.Q6_K: [type_size - 2]}
    for offset in half_offsets[ggml_type]:
        blocks[:, offset : offset + 2] = rng.normal(size=(num_blocks, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(-1)


@pytest.mark.parametrize("ggml_type", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K])
def test_torch_dequant_matches_gguf_numpy_reference(ggml_type: GGMLQuantizationType) -> None:
    rows, cols = 6, 512
    data = _random_blocks(ggml_type, rows * cols, np.random.default_rng(0)).reshape(rows, -1)
    expected = numpy_dequantize(data, ggml_type).reshape(rows, cols)
    np.testing.assert_array_equal(dequantize(data, ggml_type, (rows, cols)).numpy(), expected)


def test_dequant_falls_back_to_numpy_for_other_types() -> None:
    data = _random_blocks(Q.Q8_0, 256, np.random.default_rng(1)).reshape(1, -1)
    values = numpy_dequantize(data, Q.Q8_0).reshape(1, 256)
    q5 = quantize(values, Q.Q5_0)
    expected = numpy_dequantize(q5, Q.Q5_0).reshape(1, 256)
    np.testing.assert_array_equal(dequantize(q5, Q.Q5_0, (1, 256)).numpy(), expected)


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    weight = torch.randn(3 * 64, 40)
    assert torch.equal(unpermute_rotary(llama_cpp_permute(weight, 3), 3), weight)
    bias = torch.randn(3 * 64)
    assert torch.equal(unpermute_rotary(llama_cpp_permute(bias, 3), 3), bias)
    # Pairs (2i, 2i+1) of a head go back to (i, i + head_dim/2).
    rows = torch.arange(8).float().reshape(8, 1)  # one head, head_dim 8: interleaved rows 0..7
    assert unpermute_rotary(rows, 1).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize(("arch", "bias"), [("llama", False), ("llama", True), ("qwen2", True)])
def test_tiny_gguf_round_trip(tmp_path: Path, arch: str, bias: bool) -> None:
    """Llama GGUFs hold permuted Q/K (and their biases); Qwen2 GGUFs hold them as they are."""
    hf = random_hf_state_dict(attention_bias=bias, tied=False)
    weights = load_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", arch, hf))
    assert weights.config.architecture == arch
    assert weights.config.attention_bias is bias
    assert weights.config.tie_word_embeddings is False
    assert set(weights.state_dict) == set(hf)
    for name, tensor in hf.items():
        assert torch.equal(weights.state_dict[name], tensor), name


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_matches_transformers_gguf_loader(tmp_path: Path, arch: str) -> None:
    """transformers' own GGUF loader is an independent check of names and per-arch permutation."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = write_tiny_gguf(tmp_path / "tiny.gguf", arch, random_hf_state_dict(arch == "qwen2", tied=False))
    config = transformers.AutoConfig.from_pretrained(tmp_path, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_config(config)
    reference = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    ours = load_gguf(path).state_dict
    assert set(ours) == set(reference)
    for name, tensor in ours.items():
        assert torch.equal(tensor, torch.as_tensor(reference[name])), name


def test_quantized_tiny_gguf_loads_close_to_source(tmp_path: Path) -> None:
    hf = random_hf_state_dict(attention_bias=False, tied=True)
    weights = load_gguf(write_tiny_gguf(tmp_path / "q8.gguf", "llama", hf, quantized=Q.Q8_0))
    assert weights.config.tie_word_embeddings is True
    q = weights.state_dict["model.layers.1.self_attn.q_proj.weight"]
    torch.testing.assert_close(q, hf["model.layers.1.self_attn.q_proj.weight"], atol=0.05, rtol=0.02)


def test_tensor_names_map_to_hugging_face() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.0.ffn_gate.weight") == "model.layers.0.mlp.gate_proj.weight"
    with pytest.raises(ModelLoadError, match="ffn_gate_exps"):
        hf_tensor_name("blk.0.ffn_gate_exps.weight")


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def test_llama3_rope_divisors_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def inv_freq(rope_parameters: dict) -> torch.Tensor:
        config = transformers.LlamaConfig(
            hidden_size=4096, num_attention_heads=32, rope_parameters={**rope_parameters, "rope_theta": 5e5}
        )
        if rope_parameters["rope_type"] == "default":
            return 1.0 / 5e5 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
        return ROPE_INIT_FUNCTIONS["llama3"](config, None)[0].double()

    expected = inv_freq({"rope_type": "default"}) / inv_freq(LLAMA3_SCALING)
    ours = llama3_rope_divisors(LLAMA3_SCALING, rope_theta=5e5, head_dim=128)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=0)
    assert ours[0] == 1.0
    assert ours[-1] == 8.0


def test_rope_freqs_tensor_becomes_llama3_rope_scaling(tmp_path: Path) -> None:
    """llama.cpp writes Llama 3.1's scaling as a rope_freqs.weight tensor, not as metadata."""
    divisors = llama3_rope_divisors(LLAMA3_SCALING, rope_theta=10000.0, head_dim=16).float()
    hf = random_hf_state_dict(attention_bias=False, tied=True)
    weights = load_gguf(write_tiny_gguf(tmp_path / "l3.gguf", "llama", hf, rope_freqs=divisors))
    assert weights.config.rope_scaling == LLAMA3_SCALING
    assert "rope_freqs.weight" not in weights.state_dict
    wrong = divisors.clone()
    wrong[3] = 5.0
    with pytest.raises(ModelLoadError, match="rope_freqs"):
        load_gguf(write_tiny_gguf(tmp_path / "bad.gguf", "llama", hf, rope_freqs=wrong))


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"nope" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        read_gguf(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(tmp_path / "gpt2.gguf", "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="architecture 'gpt2' is not supported"):
        load_gguf(tmp_path / "gpt2.gguf")
