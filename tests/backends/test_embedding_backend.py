"""EmbeddingBackend through the Backend protocol: embed(), OIP infer(), batching, errors, lifecycle."""

import asyncio
import os
from collections.abc import Iterator

import numpy as np
import pytest

from inferline.backends.base import Backend, TensorSpec, UnsupportedOperationError
from inferline.backends.embedding import EmbeddingBackend
from inferline.config import EmbeddingDeploymentConfig
from inferline.errors import InvalidRequestError
from inferline.runners.embedding import EmbeddingRunner
from inferline.types import Request, SamplingParams


@pytest.fixture(scope="module")
def backend() -> Iterator[EmbeddingBackend]:
    """The built-in model as the default config deploys it, with a longer delay so batches form."""
    config = EmbeddingDeploymentConfig(
        name="all-minilm-l6-v2", kind="embedding", source="all-minilm-l6-v2", max_queue_delay_us=20_000
    )
    backend = EmbeddingBackend(config)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.unload())


def test_protocol_and_metadata(backend: EmbeddingBackend) -> None:
    assert isinstance(backend, Backend)
    meta = backend.metadata
    assert (meta.name, meta.kind, meta.platform, meta.embedding_dim) == (
        "all-minilm-l6-v2",
        "embedding",
        "inferline-embedding",
        384,
    )
    assert meta.inputs == [TensorSpec("text", "BYTES", [-1])]
    assert meta.outputs == [TensorSpec("embedding", "FP32", [-1, 384])]
    assert backend.health()
    with pytest.raises(UnsupportedOperationError, match="embedding model; it cannot generate text"):
        backend.generate(Request("r", [1], SamplingParams()))


def test_embed_matches_the_runner(backend: EmbeddingBackend, minilm_runner: EmbeddingRunner) -> None:
    texts = ["first sentence", "a second, longer sentence than the first"]
    result = asyncio.run(backend.embed(texts))
    expected = minilm_runner.embed(texts)
    np.testing.assert_allclose(result.vectors, expected.vectors, atol=1e-6)
    assert result.num_tokens == sum(expected.num_tokens)


def test_oip_infer_takes_bytes_and_returns_the_embeddings(backend: EmbeddingBackend) -> None:
    texts = ["héllo wörld", "second"]
    expected = asyncio.run(backend.embed(texts)).vectors
    for array in (
        np.array([t.encode() for t in texts], dtype=object),  # what the OIP route decodes
        np.array([[t.encode()] for t in texts], dtype=object),  # Triton clients' [n, 1]
        np.array(texts),
    ):
        outputs = asyncio.run(backend.infer({"text": array}))
        assert list(outputs) == ["embedding"]
        assert outputs["embedding"].dtype == np.float32
        np.testing.assert_allclose(outputs["embedding"], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "param", "message"),
    [
        ({"input": np.array([b"x"], dtype=object)}, "input", "unknown input 'input'"),
        ({}, "text", "missing input 'text'"),
        ({"text": np.ones(2, np.float32)}, "text", "expects BYTES"),
        (
            {"text": np.array([[b"a", b"b"]], dtype=object)},
            "text",
            r"shape \[1, 2\]; the model expects \[n\]",
        ),
        ({"text": np.array([b"\xff"], dtype=object)}, "text", "not valid UTF-8"),
        ({"text": np.array([], dtype=object)}, "input", "at least one text"),
    ],
)
def test_bad_infer_inputs_name_the_input(
    backend: EmbeddingBackend, inputs: dict[str, np.ndarray], param: str, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message) as excinfo:
        asyncio.run(backend.infer(inputs))
    assert excinfo.value.param == param


def test_more_texts_than_max_batch_size_are_split_into_batches(
    backend: EmbeddingBackend, minilm_runner: EmbeddingRunner
) -> None:
    texts = [f"text number {i}" for i in range(70)]  # max_batch_size is 32: three batches
    before = backend.batcher.stats().num_batches
    result = asyncio.run(backend.embed(texts))
    assert backend.batcher.stats().num_batches - before >= 3
    expected = minilm_runner.embed(texts)
    np.testing.assert_allclose(result.vectors, expected.vectors, atol=1e-5)
    assert result.num_tokens == sum(expected.num_tokens)


def test_concurrent_requests_share_forward_passes(backend: EmbeddingBackend) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the stock market'}" for i in range(16)]
    solo = asyncio.run(backend.embed(texts[:1])).vectors[0]
    before = backend.batcher.stats().num_batches

    async def main() -> list[np.ndarray]:
        results = await asyncio.gather(*(backend.embed([t]) for t in texts))
        return [r.vectors for r in results]

    vectors = asyncio.run(main())
    assert all(v.shape == (1, 384) for v in vectors)
    np.testing.assert_allclose(vectors[0][0], solo, atol=1e-5)  # batched with padding == alone
    assert not np.allclose(vectors[0], vectors[1])  # each caller got its own row
    assert backend.batcher.stats().num_batches - before <= 4
    assert backend.stats().queue_depth == 0


def test_unload_stops_serving() -> None:
    backend = EmbeddingBackend(EmbeddingDeploymentConfig(name="e", source="all-minilm-l6-v2"))
    assert not backend.health()
    asyncio.run(backend.load())
    assert backend.health()
    asyncio.run(backend.unload())
    assert not backend.health()
    assert backend.stats().running == 0
    with pytest.raises(RuntimeError, match="not loaded"):
        asyncio.run(backend.embed(["late"]))


def test_an_embedding_batch_leaves_no_openmp_workers_behind() -> None:
    # An idle pool beside the LLM engine's makes every barrier of its steps sleep (runners/openmp.py).
    config = EmbeddingDeploymentConfig(name="e", kind="embedding", source="all-minilm-l6-v2")
    backend = EmbeddingBackend(config)

    async def main() -> tuple[int, int]:
        await backend.load()  # its batcher thread has not computed yet
        try:
            threads_before = len(os.listdir("/proc/self/task"))
            result = await backend.embed(["a sentence long enough to be worth two threads"] * 16)
            assert result.vectors.shape == (16, 384)
            return threads_before, len(os.listdir("/proc/self/task"))
        finally:
            await backend.unload()

    threads_before, threads_after = asyncio.run(main())
    assert threads_after == threads_before
