"""Hugging Face folders: config mapping, safetensors (single and sharded), tokenizer files."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inferline.errors import ModelLoadError
from inferline.models.hf_loader import load_hf_folder
from inferline.models.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TINY = {
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


def _save(
    model: torch.nn.Module, folder: Path, tokenizer: Tokenizer, **kwargs: object
) -> dict[str, torch.Tensor]:
    model.save_pretrained(folder, **kwargs)
    tokenizer.backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE})
    )
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def test_llama_folder(tmp_path: Path, default_tokenizer: Tokenizer) -> None:
    config = transformers.LlamaConfig(
        **TINY,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
        tie_word_embeddings=False,
        eos_token_id=2,
    )
    saved = _save(transformers.LlamaForCausalLM(config), tmp_path, default_tokenizer)
    weights = load_hf_folder(tmp_path)
    c = weights.config
    assert c.architecture == "llama"
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (49152, 64, 128, 2)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 2, 16)
    assert c.rms_norm_eps == 1e-5
    assert c.rope_theta == 50000.0
    assert c.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert c.max_position_embeddings == 512
    assert c.tie_word_embeddings is False
    assert c.attention_bias is False
    assert c.eos_token_ids == [2]
    assert set(weights.state_dict) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(weights.state_dict[name], tensor), name
    tok = weights.tokenizer
    assert tok.encode("Hello world!") == default_tokenizer.encode("Hello world!")
    assert tok.bos_token_id == 1
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == "<|im_start|>user\nHi<|im_end|>\n"


def test_qwen2_folder_bf16_sharded_and_tied(tmp_path: Path, default_tokenizer: Tokenizer) -> None:
    config = transformers.Qwen2Config(**TINY, tie_word_embeddings=True, rope_theta=1e6)
    model = transformers.Qwen2ForCausalLM(config).to(torch.bfloat16)
    saved = _save(model, tmp_path, default_tokenizer, max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    weights = load_hf_folder(tmp_path)
    c = weights.config
    assert c.architecture == "qwen2"
    assert c.attention_bias is True
    assert c.tie_word_embeddings is True
    assert c.rope_theta == 1e6
    assert c.rope_scaling is None
    assert c.head_dim == 16
    assert c.eos_token_ids == [2, 0]  # generation_config.json's list, then tokenizer_config's eos
    assert "model.layers.1.self_attn.q_proj.bias" in weights.state_dict
    assert "lm_head.weight" not in weights.state_dict
    assert set(weights.state_dict) == set(saved) - {"lm_head.weight"}
    for name, tensor in weights.state_dict.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, saved[name].float()), name


def test_transformers_4_config_fields(tmp_path: Path, default_tokenizer: Tokenizer) -> None:
    """Older config.json files spell rope settings as rope_theta + rope_scaling {"type": ...}."""
    raw = {
        "architectures": ["MistralForCausalLM"],
        **TINY,
        "rope_theta": 1e6,
        "rope_scaling": {"type": "dynamic", "factor": 4.0},
        "eos_token_id": 2,
    }
    hidden, kv = TINY["hidden_size"], 2 * 16
    tensors = {
        "model.embed_tokens.weight": torch.randn(TINY["vocab_size"], hidden),
        "model.norm.weight": torch.ones(hidden),
        "lm_head.weight": torch.randn(TINY["vocab_size"], hidden),
        "model.layers.0.self_attn.k_proj.weight": torch.randn(kv, hidden),
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(tmp_path / "model-00001-of-00001.safetensors"))
    save_file({"junk": torch.zeros(1)}, str(tmp_path / "consolidated.safetensors"))
    default_tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    weights = load_hf_folder(tmp_path)
    assert weights.config.architecture == "mistral"
    assert weights.config.rope_theta == 1e6
    assert weights.config.rope_scaling == {"rope_type": "dynamic", "factor": 4.0}
    assert set(weights.state_dict) == set(tensors)  # consolidated.safetensors is not mixed in
    assert not weights.tokenizer.has_chat_template


def test_unsupported_architecture(tmp_path: Path, default_tokenizer: Tokenizer) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], **TINY}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    default_tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel"):
        load_hf_folder(tmp_path)


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        load_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **TINY}))
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_hf_folder(tmp_path)
