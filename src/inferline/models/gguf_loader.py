"""Load a GGUF checkpoint (llama.cpp's format) as Hugging Face-named tensors.

Design note: the engine speaks one vocabulary, Hugging Face's, so a GGUF file is translated on
the way in: metadata keys become a `ModelConfig`, tensor names become HF names, quantized blocks
become float32 (the engine casts to its compute dtype later) unless the engine runs them as they
are (models/block_weights.py), and the row permutation that
llama.cpp's converter applies to Q and K of llama-architecture models is undone (see
`unpermute_rotary`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferline.errors import ModelLoadError
from inferline.models.block_weights import KEPT_AS, BlockMode, BlockWeight, block_weight
from inferline.models.config import ModelConfig
from inferline.models.dequant import dequantize
from inferline.models.gguf_file import GGUFFile, GGUFTensor, read_gguf
from inferline.models.loaded_weights import LoadedWeights
from inferline.models.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
# llama.cpp's converter permutes Q/K rows for these (LlamaModel and its subclasses), not for Qwen2.
_PERMUTED_ARCHITECTURES = frozenset({"llama", "mistral"})

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"


def load_gguf(path: Path, keep_blocks: BlockMode | None = None) -> LoadedWeights:
    """Read a .gguf file into a config, HF-named tensors and a tokenizer: see load_gguf_file."""
    return load_gguf_file(read_gguf(Path(path)), keep_blocks)


def load_gguf_file(gguf_file: GGUFFile, keep_blocks: BlockMode | None = None) -> LoadedWeights:
    """A parsed .gguf file as a config, HF-named tensors and a tokenizer.

    Tensors are float32, except that with `keep_blocks` the linear layers' weights stored in that
    mode's block types (Q4_0/Q4_1 for int4, Q8_0 for int8) stay BlockWeights; the vocabulary
    projection and the embedding table keep Q8_0 under either mode, as the int4 layers keep the
    projection in int8 (a tied one is the table's blocks: no `lm_head.weight`).
    """
    start_s = time.perf_counter()
    config = gguf_config(gguf_file)
    tokenizer = Tokenizer.from_gguf_metadata(gguf_file.metadata)
    state_dict: dict[str, torch.Tensor | BlockWeight] = {}
    with _one_core_free():
        for tensor in gguf_file.tensors.values():
            if tensor.name == _ROPE_FREQS:  # folded into config.rope_scaling
                continue
            name = hf_tensor_name(tensor.name)
            if keep_blocks is not None and _keeps_blocks(name, tensor, keep_blocks):
                state_dict[name] = _load_blocks(tensor, config)
            else:
                state_dict[name] = _load_tensor(tensor, config)
    logger.info(
        "loaded %s (%s, %d tensors) in %.2f s",
        gguf_file.path.name,
        config.name or config.architecture,
        len(state_dict),
        time.perf_counter() - start_s,
    )
    return LoadedWeights(config=config, state_dict=state_dict, tokenizer=tokenizer)


def _keeps_blocks(hf_name: str, tensor: GGUFTensor, mode: BlockMode) -> bool:
    if len(tensor.torch_shape) != 2:
        return False
    if hf_name in ("lm_head.weight", "model.embed_tokens.weight"):
        # Widening the table (and quantizing it again for a tied projection) took a fifth of the default
        # model's load; looked up row by row from its blocks, it also leaves 56 MB of bfloat16 unmade.
        return KEPT_AS.get(tensor.ggml_type) == "int8"
    return KEPT_AS.get(tensor.ggml_type) == mode


@contextmanager
def _one_core_free() -> Iterator[None]:
    """Dequantize on all but one of torch's threads.

    Dequantization is ~2,700 small element-wise ops bound by page faults on fresh memory. When
    another process keeps a core busy, every OpenMP region waits a scheduler slice for its
    descheduled thread: on 2 cores the default model took 9.4 s with 2 threads against 0.4 s
    with 1 (idle machine: 0.27 s against 0.37 s). torch's thread count is process-wide; it is
    restored on exit.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before - 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; `output.weight` -> `lm_head.weight`.

    Unknown names fail loudly: a tensor dropped in silence makes a model that runs and talks nonsense.
    """
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match is not None and match.group(2) in _LAYER_NAMES:
        layer, kind, suffix = match.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    raise ModelLoadError(
        f"GGUF tensor {gguf_name!r} has no place in a Llama-family model (mixture-of-experts and "
        f"other architectures are not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
    )


def unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation, back to Hugging Face's rotate-half layout.

    HF keeps each head's rotary pairs as (x[i], x[i + head_dim/2]); llama.cpp's converter
    interleaves them as (x[2i], x[2i+1]) by viewing each head's rows as [2, head_dim/2] and
    transposing. Inverse: view them as [head_dim/2, 2] and transpose back.
    `weight`: [num_heads * head_dim, hidden] (or [num_heads * head_dim] for a bias).
    """
    head_dim = weight.shape[0] // num_heads
    rows = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return rows.transpose(1, 2).reshape(weight.shape).contiguous()


def _load_tensor(tensor: GGUFTensor, config: ModelConfig) -> torch.Tensor:
    weight = dequantize(tensor.data, tensor.ggml_type, tensor.torch_shape)
    heads = _permuted_heads(tensor, config)
    return weight if heads is None else unpermute_rotary(weight, heads)


def _load_blocks(tensor: GGUFTensor, config: ModelConfig) -> BlockWeight:
    weight = block_weight(tensor.data, tensor.ggml_type, tensor.torch_shape)
    heads = _permuted_heads(tensor, config)
    if heads is None:
        return weight
    return weight.rows(unpermute_rotary(torch.arange(weight.out_features), heads))


def _permuted_heads(tensor: GGUFTensor, config: ModelConfig) -> int | None:
    """The head count whose rows llama.cpp permuted in this tensor, or None when it did not."""
    if config.architecture in _PERMUTED_ARCHITECTURES:
        kind = tensor.name.split(".")[-2]
        if kind == "attn_q":
            return config.num_attention_heads
        if kind == "attn_k":
            return config.num_key_value_heads
    return None


def gguf_config(gguf_file: GGUFFile) -> ModelConfig:
    """Map `{arch}.*`, `general.*` and `tokenizer.ggml.*` keys to a ModelConfig."""
    meta = gguf_file.metadata
    arch = str(meta.get("general.architecture", ""))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{gguf_file.path.name}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    hidden_size = _required(meta, f"{arch}.embedding_length", gguf_file.path)
    num_heads = _required(meta, f"{arch}.attention.head_count", gguf_file.path)
    head_dim = meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
    vocab_size = len(meta.get("tokenizer.ggml.tokens", [])) or meta.get(f"{arch}.vocab_size")
    embedding = gguf_file.tensors.get("token_embd.weight")
    if embedding is None or embedding.torch_shape[0] != vocab_size:
        rows = None if embedding is None else embedding.torch_shape[0]
        raise ModelLoadError(
            f"{gguf_file.path.name}: the vocabulary has {vocab_size} tokens "
            f"but token_embd.weight has {rows} rows"
        )
    eos_keys = [f"tokenizer.ggml.{name}_token_id" for name in ("eos", "eot", "eom")]
    rope_theta = _float32(meta.get(f"{arch}.rope.freq_base", 10000.0))
    return ModelConfig(
        architecture=arch,
        vocab_size=int(vocab_size),
        hidden_size=int(hidden_size),
        intermediate_size=int(_required(meta, f"{arch}.feed_forward_length", gguf_file.path)),
        num_hidden_layers=int(_required(meta, f"{arch}.block_count", gguf_file.path)),
        num_attention_heads=int(num_heads),
        num_key_value_heads=int(meta.get(f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=int(head_dim or hidden_size // num_heads),
        rms_norm_eps=_float32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=rope_theta,
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
        tie_word_embeddings="output.weight" not in gguf_file.tensors,
        attention_bias="blk.0.attn_q.bias" in gguf_file.tensors,
        rope_scaling=_rope_scaling(gguf_file, arch, rope_theta),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=list(dict.fromkeys(int(meta[key]) for key in eos_keys if key in meta)),
        name=str(meta.get("general.name", gguf_file.path.stem)),
    )


def _float32(value: float) -> float:
    """GGUF stores float32: report 1e-05, not 9.999999747378752e-06 (the shortest float32 repr)."""
    return float(str(np.float32(value)))


def _required(meta: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in meta:
        raise ModelLoadError(f"{path.name}: GGUF metadata key {key!r} is missing; the file is incomplete")
    return meta[key]


def _rope_scaling(gguf_file: GGUFFile, arch: str, rope_theta: float) -> dict[str, Any] | None:
    meta = gguf_file.metadata
    prefix = f"{arch}.rope.scaling."
    kind = meta.get(prefix + "type")
    original = meta.get(prefix + "original_context_length")
    if _ROPE_FREQS in gguf_file.tensors:
        return _llama3_rope_scaling(gguf_file, arch, rope_theta, original)
    if kind in (None, "none") or meta.get(prefix + "factor") is None:
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": float(meta[prefix + "factor"])}
    if kind == "linear":
        return scaling
    if kind == "yarn":
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        if meta.get(prefix + "attn_factor") is not None:
            scaling["attention_factor"] = float(meta[prefix + "attn_factor"])
        return scaling
    raise ModelLoadError(f"{gguf_file.path.name}: rope scaling type {kind!r} is not supported (linear, yarn)")


def _llama3_rope_scaling(
    gguf_file: GGUFFile, arch: str, rope_theta: float, original: int | None
) -> dict[str, Any]:
    """llama.cpp stores Llama 3.1's rope scaling as per-frequency divisors (rope_freqs.weight),
    not as parameters. Recover HF's parameters, assuming Meta's low/high frequency factors
    (1, 4), and check they reproduce the stored divisors."""
    tensor = gguf_file.tensors[_ROPE_FREQS]
    divisors = dequantize(tensor.data, tensor.ggml_type, tensor.torch_shape).double()
    scaling = {
        "rope_type": "llama3",
        "factor": float(divisors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": int(original or 8192),
    }
    expected = llama3_rope_divisors(scaling, rope_theta, head_dim=2 * divisors.numel())
    if not torch.allclose(divisors, expected, rtol=1e-3):
        raise ModelLoadError(
            f"{gguf_file.path.name}: rope_freqs.weight does not match Llama 3 rope scaling with "
            f"{scaling}; this rope variant is not supported"
        )
    return scaling


def llama3_rope_divisors(scaling: Mapping[str, Any], rope_theta: float, head_dim: int) -> torch.Tensor:
    """What each rotary frequency is divided by under Llama 3 scaling: [head_dim / 2], float64."""
    inv_freq = 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    original = scaling["original_max_position_embeddings"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    smooth = ((original / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    # smooth = 1 keeps short wavelengths as they are, smooth = 0 divides long ones by `factor`.
    return 1.0 / ((1.0 - smooth) / factor + smooth)
