"""The C++ CPU decode step computes what the eager layers compute, for every weight format."""

import pytest
import torch

from inferline import LLM, SamplingParams
from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model
from inferline.engine.runner import allocate_kv_caches
from inferline.layers.attention import AttentionMetadata, DecodeBatch, PrefillChunk
from inferline.layers.cpu_decode import MAX_QUANTIZED_ROWS, MAX_ROWS
from inferline.layers.cpu_kernels import load_cpu_kernels

BLOCK_SIZE = 4
# Three sequences whose blocks lie out of order and apart in the pool, with different context lengths.
PROMPT_LENS = [5, 11, 23]
BLOCK_TABLES = [[7, 2], [3, 9, 0], [12, 5, 11, 1, 14, 6]]
NUM_BLOCKS = 16

pytestmark = pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler to build the step")


def _prefill(loaded: LoadedModel, caches: list[torch.Tensor]) -> None:
    generator = torch.Generator().manual_seed(0)
    for length, table in zip(PROMPT_LENS, BLOCK_TABLES, strict=True):
        ids = torch.randint(100, loaded.config.vocab_size, (length,), generator=generator)
        slots = torch.tensor([table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(length)])
        chunk = PrefillChunk(0, length, 0, torch.tensor(table))
        loaded.model(ids, torch.arange(length), caches, AttentionMetadata(slots, None, [chunk]))


def _decode_meta(dtype: torch.dtype) -> AttentionMetadata:
    max_blocks = max(len(t) for t in BLOCK_TABLES)
    tables = torch.tensor([t + [0] * (max_blocks - len(t)) for t in BLOCK_TABLES])
    new_positions = zip(PROMPT_LENS, BLOCK_TABLES, strict=True)
    slots = torch.tensor([t[n // BLOCK_SIZE] * BLOCK_SIZE + n % BLOCK_SIZE for n, t in new_positions])
    context_lens = torch.tensor(PROMPT_LENS) + 1
    past = torch.arange(max_blocks * BLOCK_SIZE)[None, :] >= context_lens[:, None]
    mask = (
        torch.zeros(past.shape, dtype=dtype)
        .masked_fill_(past, float("-inf"))
        .view(len(PROMPT_LENS), 1, 1, -1)
    )
    return AttentionMetadata(slots, DecodeBatch(len(PROMPT_LENS), tables, mask, context_lens))


# A mixed step: sequences 1 and 2 decode, sequence 0 goes on with three more prompt tokens after its
# five cached ones, and a new sequence brings a six-token prompt in blocks 4 and 8.
NEW_TABLE = [4, 8]
MIXED_IDS = [101, 2024, 9, 88, 4000, 15, 16, 17, 18, 19, 20]


def _mixed_meta(dtype: torch.dtype) -> tuple[torch.Tensor, AttentionMetadata]:
    decoding = [1, 2]
    max_blocks = max(len(BLOCK_TABLES[s]) for s in decoding)
    tables = torch.tensor([BLOCK_TABLES[s] + [0] * (max_blocks - len(BLOCK_TABLES[s])) for s in decoding])
    context_lens = torch.tensor([PROMPT_LENS[s] + 1 for s in decoding])
    past = torch.arange(max_blocks * BLOCK_SIZE)[None, :] >= context_lens[:, None]
    mask = torch.zeros(past.shape, dtype=dtype).masked_fill_(past, float("-inf")).view(2, 1, 1, -1)
    rows = [(BLOCK_TABLES[s], PROMPT_LENS[s]) for s in decoding]
    rows += [(BLOCK_TABLES[0], p) for p in range(5, 8)] + [(NEW_TABLE, p) for p in range(6)]
    slots = torch.tensor([t[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for t, p in rows])
    chunks = [
        PrefillChunk(2, 3, 5, torch.tensor(BLOCK_TABLES[0])),
        PrefillChunk(5, 6, 0, torch.tensor(NEW_TABLE)),
    ]
    meta = AttentionMetadata(slots, DecodeBatch(2, tables, mask, context_lens), chunks)
    return torch.tensor([p for _, p in rows]), meta


def _decode_both_ways(
    loaded: LoadedModel, mixed: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    config = loaded.config
    layer_shape = (2, NUM_BLOCKS, BLOCK_SIZE, config.num_key_value_heads, config.head_dim)
    caches = allocate_kv_caches(config.num_hidden_layers, layer_shape, torch.float32, torch.device("cpu"))
    model = loaded.model
    with torch.inference_mode():
        _prefill(loaded, caches)
        if mixed:
            ids = torch.tensor(MIXED_IDS)
            positions, meta = _mixed_meta(torch.float32)
        else:
            ids = torch.tensor([101, 2024, 377])
            positions = torch.tensor(PROMPT_LENS)
            meta = _decode_meta(torch.float32)
        fused_caches = [c.clone() for c in caches]
        model.cpu_decode = None  # an engine built earlier on this shared model may have set it
        eager = model(ids, positions, caches, meta)
        assert model.use_cpu_decode_step()
        try:
            assert model.cpu_decode is not None
            assert model.cpu_decode.handles(meta)
            fused = model(ids, positions, fused_caches, meta)
        finally:
            model.cpu_decode = None
    return eager, fused, caches, fused_caches


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("mixed", [False, True], ids=["decodes", "decodes-and-prompt-chunks"])
def test_float32_step_matches_eager_layers(default_model: LoadedModel, mixed: bool) -> None:
    eager, fused, caches, fused_caches = _decode_both_ways(default_model, mixed)
    assert _relative(fused, eager) < 1e-5
    for cache, fused_cache in zip(caches, fused_caches, strict=True):
        torch.testing.assert_close(fused_cache, cache, atol=1e-4, rtol=1e-4)  # the new keys and values


@pytest.mark.parametrize(
    "options", [{"dtype": "bfloat16"}, {"quantization": "int8"}, {"quantization": "int4"}]
)
def test_bfloat16_and_quantized_steps_are_as_close_to_float32_as_eager_layers(
    default_model: LoadedModel, options: dict[str, str]
) -> None:
    loaded = load_model(EngineConfig(device="cpu", **options))
    eager, fused, _, _ = _decode_both_ways(loaded)
    reference, _, _, _ = _decode_both_ways(default_model)
    # Sums in another order move a bfloat16 ulp here and there, and 30 layers carry it on (~1%)...
    assert _relative(fused, eager) < 0.02
    # ...but no further from the float32 model than the eager layers are (2-5% for these formats).
    assert _relative(fused, reference) < 1.2 * _relative(eager, reference)


@pytest.mark.parametrize(
    ("options", "max_rows"), [({"dtype": "float32"}, MAX_ROWS), ({}, MAX_QUANTIZED_ROWS)]
)
def test_only_steps_of_few_tokens_take_the_step(
    default_model: LoadedModel, options: dict[str, str], max_rows: int
) -> None:
    loaded = default_model if options else load_model(EngineConfig(device="cpu"))  # {}: int4, the default
    assert loaded.model.use_cpu_decode_step()
    step = loaded.model.cpu_decode
    loaded.model.cpu_decode = None  # the shared model stays as other tests expect it
    assert step is not None
    table = torch.zeros(1, 1, dtype=torch.long)
    decode = DecodeBatch(2, table, torch.zeros(1), torch.ones(1, dtype=torch.long))
    chunk = PrefillChunk(2, max_rows - 2, 0, table[0])
    assert step.handles(AttentionMetadata(torch.zeros(max_rows, dtype=torch.long), decode, [chunk]))
    chunk.num_tokens += 1
    assert not step.handles(AttentionMetadata(torch.zeros(max_rows + 1, dtype=torch.long), decode, [chunk]))


def test_engine_greedy_output_is_unchanged_by_the_step(default_model: LoadedModel) -> None:
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    default_model.model.cpu_decode = None
    eager = LLM(loaded=default_model, kv_cache_bytes=64 << 20, cpu_decode_step=False).generate(
        prompts, params
    )
    assert default_model.model.cpu_decode is None
    fused = LLM(loaded=default_model, kv_cache_bytes=64 << 20).generate(prompts, params)
    assert default_model.model.cpu_decode is not None
    default_model.model.cpu_decode = None
    assert [o.outputs[0].token_ids for o in fused] == [o.outputs[0].token_ids for o in eager]
