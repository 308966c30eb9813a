"""Sizing the KV pool from the configured memory limit: never a fixed grab of the whole device."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from inferline.config import EngineConfig
from inferline.errors import InvalidRequestError
from inferline.models.config import ModelConfig


def free_memory_bytes(device: torch.device) -> int:
    """Memory the KV pool may draw from: free device memory on CUDA, available RAM on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class KVPoolPlan:
    num_blocks: int
    block_bytes: int
    bytes_per_token: int
    max_model_len: int
    """The context length actually served: the model's, the config's, or the pool's, whichever is least."""

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.block_bytes


def plan_kv_pool(
    config: EngineConfig,
    model_config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    draft_config: ModelConfig | None = None,
) -> KVPoolPlan:
    """Blocks that fit the budget; with a speculative draft model, each block's slots hold the draft's
    KV too (same block ids in the draft's own tensors), so a block costs both models' bytes."""
    kv_elements = model_config.kv_bytes_per_token
    if draft_config is not None:
        kv_elements += draft_config.kv_bytes_per_token
    bytes_per_token = kv_elements * dtype.itemsize
    block_bytes = bytes_per_token * config.block_size
    max_model_len = min(
        config.max_model_len or model_config.max_position_embeddings, model_config.max_position_embeddings
    )
    if config.kv_cache_bytes is not None:
        budget = config.kv_cache_bytes
        source = f"kv_cache_bytes={config.kv_cache_bytes}"
    else:
        budget = int(free_memory_bytes(device) * config.kv_cache_fraction)
        source = f"kv_cache_fraction={config.kv_cache_fraction} of free memory"
    # More blocks than every slot at full length could ever use is memory held for nothing.
    useful_blocks = config.max_num_seqs * -(-max_model_len // config.block_size)
    num_blocks = min(budget // block_bytes, useful_blocks)
    if num_blocks < 2:
        raise InvalidRequestError(
            f"{source} gives room for {num_blocks} KV blocks of {block_bytes} bytes; at least 2 are needed: "
            "raise kv_cache_bytes or kv_cache_fraction",
            "kv_cache_bytes",
        )
    # One sequence must fit in the pool on its own, or it could never finish.
    max_model_len = min(max_model_len, num_blocks * config.block_size)
    return KVPoolPlan(num_blocks, block_bytes, bytes_per_token, max_model_len)
