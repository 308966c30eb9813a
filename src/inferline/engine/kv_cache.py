"""The KV-cache block manager: which blocks each sequence owns, and which full blocks can be shared.

Design: a fixed pool of block ids with reference counts. A block whose count drops to zero goes to the
tail of a free queue but keeps its prefix hash, so a later request with the same prefix can take it
back (a prefix-cache hit) until it reaches the head of the queue and is reused for new data; the
queue order is therefore least-recently-used eviction. A full block's hash covers its tokens and,
through the parent hash, every token before it, so equal hashes mean equal KV contents.

A prompt's last, partial block is indexed too, under the hash of the tokens it holds when the prompt's
prefill ends (its later slots belong to that sequence's output). Such a block, or a full block holding
a new prompt's last token (whose forward pass must run to produce logits), is not shared but copied: the
new sequence gets a fresh block, the runner copies the cached block's KV into it before the step, and
the step computes only the tokens the copy does not cover; at least the last. A prompt sent twice thus
costs one token's forward pass, not a block's (up to 16 tokens).
This module holds ids and counts only; the tensors live with the model runner.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

BlockHash = bytes


def hash_block(parent: BlockHash | None, token_ids: list[int]) -> BlockHash:
    """A collision-resistant hash: requests from different tenants must never alias each other's KV."""
    digest = hashlib.blake2b(parent or b"", digest_size=16)
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0
    """Prompt tokens looked up in the prefix cache at admission."""
    hit_tokens: int = 0
    """Of those, tokens whose KV was found and reused."""

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class BlockPool:
    """Block ids with reference counts, the LRU free queue and the hash index of full blocks."""

    def __init__(self, num_blocks: int, enable_prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        self.tail_hash: list[BlockHash | None] = [None] * num_blocks
        """The hash of a prompt's tail that the block's first slots hold (a partial block's, indexed too)."""
        self.cached: dict[BlockHash, int] = {}
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        """Blocks not referenced by any sequence, cached ones included (they can be evicted)."""
        return len(self.free_queue)

    def lookup(self, block_hash: BlockHash) -> int | None:
        return self.cached.get(block_hash)

    def allocate(self, count: int) -> list[int]:
        """Take `count` blocks from the head of the free queue, evicting their cached contents."""
        if count > len(self.free_queue):
            raise RuntimeError(f"asked for {count} KV blocks with {len(self.free_queue)} free")
        block_ids = []
        for _ in range(count):
            block_id, _ = self.free_queue.popitem(last=False)
            self._forget(block_id)
            self.ref_counts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def share(self, block_id: int) -> None:
        """Add a reference to a cached block, taking it off the free queue if nobody held it."""
        if self.ref_counts[block_id] == 0:
            del self.free_queue[block_id]
        self.ref_counts[block_id] += 1

    def free(self, block_ids: list[int]) -> None:
        # Reverse order: a sequence's last blocks are the least likely to be shared, so evict them first.
        for block_id in reversed(block_ids):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self.free_queue[block_id] = None

    def register(self, block_id: int, block_hash: BlockHash) -> None:
        """Index a block that just became full; an identical block already indexed stays the canonical one."""
        if self.enable_prefix_caching and block_hash not in self.cached:
            self.cached[block_hash] = block_id
            self.block_hash[block_id] = block_hash

    def register_tail(self, block_id: int, tail_hash: BlockHash) -> None:
        """Index a prompt's partial last block under the hash of the tokens its first slots hold."""
        if self.enable_prefix_caching and tail_hash not in self.cached and self.tail_hash[block_id] is None:
            self.cached[tail_hash] = block_id
            self.tail_hash[block_id] = tail_hash

    def _forget(self, block_id: int) -> None:
        for hashes in (self.block_hash, self.tail_hash):
            block_hash = hashes[block_id]
            if block_hash is not None:
                del self.cached[block_hash]
                hashes[block_id] = None


@dataclass
class CachedTail:
    """A cached block whose first `num_tokens` slots hold the KV of the tokens after a shared prefix."""

    block_id: int
    num_tokens: int


@dataclass
class ComputedPrefix:
    """KV a new sequence can reuse, found by `KVCacheManager.find_cached_prefix`: full blocks it shares,
    then perhaps a block it copies."""

    block_ids: list[int]
    block_hashes: list[BlockHash]
    tail: CachedTail | None = None

    @property
    def num_blocks(self) -> int:
        return len(self.block_ids)

    def num_tokens(self, block_size: int) -> int:
        return self.num_blocks * block_size + (self.tail.num_tokens if self.tail else 0)


class KVCacheManager:
    """Per-sequence block tables over one BlockPool: can_allocate / allocate / free."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.block_tables: dict[str, list[int]] = {}
        self.block_hashes: dict[str, list[BlockHash]] = {}
        self.prefix_stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by live sequences."""
        return 1.0 - self.pool.num_free_blocks / self.pool.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, token_ids: list[int]) -> ComputedPrefix:
        """The longest run of cached full blocks at the start of `token_ids`, then the cached block (full,
        or a prompt's partial tail) that holds the most of the tokens after them.

        The last token is never taken from the cache: its forward pass is what produces the logits.
        """
        prefix = ComputedPrefix([], [])
        if not self.pool.enable_prefix_caching:
            return prefix
        parent: BlockHash | None = None
        start = 0
        for start in range(0, len(token_ids) - self.block_size, self.block_size):
            block_hash = hash_block(parent, token_ids[start : start + self.block_size])
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            prefix.block_ids.append(block_id)
            prefix.block_hashes.append(block_hash)
            parent = block_hash
        else:
            start = prefix.num_blocks * self.block_size
        reusable = len(token_ids) - 1 - start
        for length in range(min(len(token_ids) - start, self.block_size), 0, -1) if reusable > 0 else ():
            block_id = self.pool.lookup(hash_block(parent, token_ids[start : start + length]))
            if block_id is not None:
                prefix.tail = CachedTail(block_id, min(length, reusable))
                break
        return prefix

    def can_allocate(self, seq_id: str, num_tokens: int, prefix: ComputedPrefix | None = None) -> bool:
        """Whether the sequence can hold `num_tokens` tokens in total (reusing `prefix` if new)."""
        held = len(self.block_tables.get(seq_id, ()))
        reused_free = 0
        if prefix is not None:
            held += prefix.num_blocks
            reused_free = sum(1 for b in prefix.block_ids if self.pool.ref_counts[b] == 0)
        new_blocks = max(self.blocks_needed(num_tokens) - held, 0)
        return new_blocks + reused_free <= self.pool.num_free_blocks

    def allocate(
        self, seq_id: str, num_tokens: int, prefix: ComputedPrefix | None = None
    ) -> tuple[int, int] | None:
        """Grow the sequence's block table to hold `num_tokens`; call can_allocate first. With a prefix
        that has a tail, returns (cached block, fresh block): the runner must copy the first's KV into
        the second before this step's forward pass (it may be evicted by the next allocation, but not
        overwritten before then: all copies run before any KV is written)."""
        table = self.block_tables.setdefault(seq_id, [])
        hashes = self.block_hashes.setdefault(seq_id, [])
        copy = None
        if prefix is not None and prefix.num_blocks:
            for block_id in prefix.block_ids:
                self.pool.share(block_id)
            table.extend(prefix.block_ids)
            hashes.extend(prefix.block_hashes)
        if prefix is not None and prefix.tail is not None:
            destination = self.pool.allocate(1)[0]
            table.append(destination)
            copy = (prefix.tail.block_id, destination)
        missing = self.blocks_needed(num_tokens) - len(table)
        if missing > 0:
            table.extend(self.pool.allocate(missing))
        return copy

    def record_prefix_lookup(self, num_queried_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_stats.queried_tokens += num_queried_tokens
        self.prefix_stats.hit_tokens += num_hit_tokens

    def has_uncached_full_blocks(self, seq_id: str, num_computed_tokens: int) -> bool:
        """Whether `cache_full_blocks` would index anything: callers skip building the token list."""
        return self.pool.enable_prefix_caching and num_computed_tokens // self.block_size > len(
            self.block_hashes[seq_id]
        )

    def cache_prompt_tail(self, seq_id: str, prompt_token_ids: list[int]) -> None:
        """Index the prompt's partial last block, once the prompt's KV is computed and its full blocks
        are indexed (cache_full_blocks)."""
        index, length = divmod(len(prompt_token_ids), self.block_size)
        hashes = self.block_hashes[seq_id]
        if not self.pool.enable_prefix_caching or not length or len(hashes) < index:
            return
        parent = hashes[index - 1] if index else None
        tail_hash = hash_block(parent, prompt_token_ids[index * self.block_size :])
        self.pool.register_tail(self.block_tables[seq_id][index], tail_hash)

    def cache_full_blocks(self, seq_id: str, token_ids: list[int], num_computed_tokens: int) -> None:
        """Index the sequence's blocks whose KV is now fully computed."""
        if not self.pool.enable_prefix_caching:
            return
        table = self.block_tables[seq_id]
        hashes = self.block_hashes[seq_id]
        for index in range(len(hashes), num_computed_tokens // self.block_size):
            start = index * self.block_size
            block_hash = hash_block(
                hashes[-1] if hashes else None, token_ids[start : start + self.block_size]
            )
            hashes.append(block_hash)
            self.pool.register(table[index], block_hash)

    def block_ids(self, seq_id: str) -> list[int]:
        return self.block_tables[seq_id]

    def free(self, seq_id: str) -> None:
        """Release every block the sequence holds (cached ones stay findable until evicted)."""
        table = self.block_tables.pop(seq_id, None)
        self.block_hashes.pop(seq_id, None)
        if table:
            self.pool.free(table)
