"""Greedy output matches Hugging Face transformers `generate` on the same dequantized weights."""

import pytest
import torch

from inferline import LLM, SamplingParams
from inferline.engine.model_loader import LoadedModel
from inferline.models.loader import load_weights
from inferline.models.reference import transformers_model

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
    pytest.importorskip("transformers")
    return transformers_model(load_weights("default"))


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
