"""The KV pool is sized from the configured limit, never a grab of the whole device."""

import pytest
import torch

from inferline.config import EngineConfig
from inferline.engine.memory import free_memory_bytes, plan_kv_pool
from inferline.errors import InvalidRequestError
from inferline.models.config import ModelConfig

SMOL = ModelConfig(
    architecture="llama",
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
)
CPU = torch.device("cpu")


def test_bytes_limit_sets_the_block_count() -> None:
    plan = plan_kv_pool(EngineConfig(kv_cache_bytes=64 << 20, block_size=16), SMOL, torch.float32, CPU)
    assert plan.bytes_per_token == 2 * 30 * 3 * 64 * 4
    assert plan.num_blocks == (64 << 20) // plan.block_bytes
    assert plan.total_bytes <= 64 << 20


def test_fraction_of_free_memory() -> None:
    plan = plan_kv_pool(EngineConfig(kv_cache_fraction=0.01), SMOL, torch.bfloat16, CPU)
    assert plan.total_bytes <= 0.01 * free_memory_bytes(CPU) * 1.05
    assert plan.num_blocks > 0


def test_pool_never_exceeds_what_the_slots_can_use() -> None:
    config = EngineConfig(kv_cache_bytes=8 << 30, max_num_seqs=2, max_model_len=1024, block_size=16)
    plan = plan_kv_pool(config, SMOL, torch.float32, CPU)
    assert plan.num_blocks == 2 * 1024 // 16


def test_context_length_is_capped_by_a_small_pool() -> None:
    plan = plan_kv_pool(
        EngineConfig(kv_cache_bytes=100 * 16 * 46080, block_size=16), SMOL, torch.float32, CPU
    )
    assert plan.num_blocks == 100
    assert plan.max_model_len == 1600


def test_a_pool_too_small_names_the_setting() -> None:
    with pytest.raises(InvalidRequestError, match="kv_cache_bytes"):
        plan_kv_pool(EngineConfig(kv_cache_bytes=1 << 16), SMOL, torch.float32, CPU)
