from inferline.engine.kv_cache import CachedTail, KVCacheManager, hash_block


def test_allocate_and_free_return_every_block() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    assert kv.can_allocate("a", 10)
    kv.allocate("a", 10)
    assert len(kv.block_ids("a")) == 3
    kv.allocate("a", 13)
    assert len(kv.block_ids("a")) == 4
    assert kv.num_free_blocks == 4
    assert not kv.can_allocate("b", 17)
    kv.free("a")
    assert kv.num_free_blocks == 8


def test_block_hash_covers_the_whole_prefix() -> None:
    first = hash_block(None, [1, 2, 3, 4])
    assert hash_block(first, [5, 6, 7, 8]) != hash_block(hash_block(None, [9, 9, 9, 9]), [5, 6, 7, 8])
    assert hash_block(None, [1, 2, 3, 4]) == first


def test_prefix_blocks_are_shared_and_counted() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    tokens = list(range(10))
    kv.allocate("a", 10)
    kv.cache_full_blocks("a", tokens, 10)
    prefix = kv.find_cached_prefix(tokens + [99])
    assert prefix.block_ids == kv.block_ids("a")[:2]
    kv.allocate("b", 11, prefix)
    assert kv.block_ids("b")[:2] == kv.block_ids("a")[:2]
    assert kv.pool.ref_counts[prefix.block_ids[0]] == 2
    kv.free("a")
    kv.free("b")
    assert kv.num_free_blocks == 8


def test_last_token_is_never_served_from_the_cache() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    tokens = list(range(8))
    kv.allocate("a", 8)
    kv.cache_full_blocks("a", tokens, 8)
    assert kv.find_cached_prefix(tokens).num_blocks == 1


def test_freed_cached_blocks_survive_until_evicted_lru() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    kv.allocate("a", 4)
    kv.cache_full_blocks("a", [1, 2, 3, 4], 4)
    kv.free("a")
    assert kv.find_cached_prefix([1, 2, 3, 4, 5]).num_blocks == 2
    # Two fresh blocks come from the head of the free queue: the never-used ones, not the cached ones.
    kv.allocate("b", 4)
    assert kv.find_cached_prefix([1, 2, 3, 4, 5]).num_blocks == 2
    kv.free("b")
    kv.allocate("c", 8)  # takes all four: the cached blocks are evicted
    assert kv.find_cached_prefix([1, 2, 3, 4, 5]).num_blocks == 0


def test_can_allocate_counts_reused_free_blocks() -> None:
    kv = KVCacheManager(num_blocks=3, block_size=2, enable_prefix_caching=True)
    kv.allocate("a", 4)
    kv.cache_full_blocks("a", [1, 2, 3, 4], 4)
    kv.free("a")
    prefix = kv.find_cached_prefix([1, 2, 3, 4, 5])
    # 5 tokens need 3 blocks: 2 cached (free, to be taken off the queue) + 1 new = all 3 free blocks.
    assert kv.can_allocate("b", 5, prefix)
    assert not kv.can_allocate("b", 7, prefix)


def test_disabled_prefix_caching_finds_nothing() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    kv.allocate("a", 4)
    kv.cache_full_blocks("a", [1, 2, 3, 4], 4)
    assert kv.find_cached_prefix([1, 2, 3, 4, 5]).num_blocks == 0


def test_a_cached_block_holding_the_last_token_is_copied_not_shared() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    tokens = list(range(8))
    kv.allocate("a", 8)
    kv.cache_full_blocks("a", tokens, 8)
    prefix = kv.find_cached_prefix(tokens)
    assert prefix.tail == CachedTail(kv.block_ids("a")[1], 3)  # all of it but the last token
    assert prefix.num_tokens(4) == 7
    copy = kv.allocate("b", 8, prefix)
    assert kv.block_ids("b")[0] == kv.block_ids("a")[0]
    assert copy == (kv.block_ids("a")[1], kv.block_ids("b")[1])
    assert kv.block_ids("b")[1] != kv.block_ids("a")[1]
    assert kv.pool.ref_counts[kv.block_ids("a")[1]] == 1


def test_a_prompts_partial_tail_serves_longer_prompts_until_evicted() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    prompt = [1, 2, 3, 4, 5, 6]
    kv.allocate("a", 6)
    kv.cache_full_blocks("a", prompt, 6)
    kv.cache_prompt_tail("a", prompt)
    tail_block = kv.block_ids("a")[1]
    longer = kv.find_cached_prefix([*prompt, 7, 8, 9])
    assert longer.block_ids == kv.block_ids("a")[:1]
    assert longer.tail == CachedTail(tail_block, 2)
    assert kv.find_cached_prefix(prompt).tail == CachedTail(tail_block, 1)  # the last token is computed
    assert kv.find_cached_prefix([1, 2, 3, 4, 5, 9, 9]).tail is None  # only the whole tail is indexed
    kv.free("a")
    kv.allocate("b", 16)  # takes every block: the cached ones are evicted
    assert kv.find_cached_prefix([*prompt, 7]) == kv.find_cached_prefix([42] * 7)
    assert kv.find_cached_prefix([*prompt, 7]).tail is None
