"""The engine on a CUDA device (skipped where there is none: CI runs on CPUs)."""

import pytest

from inferline import LLM, SamplingParams
from inferline.engine.model_loader import LoadedModel

pytestmark = pytest.mark.gpu

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]


def test_cuda_float32_greedy_matches_cpu(default_model: LoadedModel) -> None:
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    cpu = LLM(loaded=default_model, kv_cache_bytes=64 << 20).generate(PROMPTS, params)
    cuda = LLM(device="cuda", dtype="float32", kv_cache_bytes=64 << 20).generate(PROMPTS, params)
    assert [o.outputs[0].token_ids for o in cuda] == [o.outputs[0].token_ids for o in cpu]


def test_cuda_bfloat16_batched_equals_one_at_a_time() -> None:
    llm = LLM(device="cuda", kv_cache_bytes=64 << 20)
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    together = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    alone = [llm.generate(p, params)[0].outputs[0].token_ids for p in PROMPTS]
    assert together == alone
    assert llm.engine.stats().kv_num_free_blocks == llm.engine.stats().kv_num_blocks
