"""Greedy output matches Hugging Face transformers `generate` on the same dequantized weights."""

import pytest
import torch

from inferline import LLM, SamplingParams
from inferline.engine.model_loader import LoadedModel
from inferline.models.loader import load_weights

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "List three colours: red,",
    "The quick brown fox jumps over the lazy dog. " * 6 + "Then the fox",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    weights = load_weights("default")
    c = weights.config
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_ids[0],
    )
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(weights.state_dict, strict=False)
    model.tie_weights()
    # Neither side stops or suppresses at end-of-sequence: both must produce the same 32 argmax tokens.
    model.generation_config.eos_token_id = None
    return model.eval()


def test_greedy_tokens_match_transformers_generate(default_model: LoadedModel, hf_model) -> None:
    llm = LLM(loaded=default_model, kv_cache_bytes=64 << 20)
    tokenizer = default_model.tokenizer
    ours = llm.generate(PROMPTS, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))
    for prompt, out in zip(PROMPTS, ours, strict=True):
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.inference_mode():
            reference = hf_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        expected = reference[0, ids.shape[1] :].tolist()
        assert out.outputs[0].token_ids == expected, f"diverged on {prompt!r}"
        assert out.outputs[0].text == tokenizer.decode(expected)
