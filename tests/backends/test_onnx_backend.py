"""OnnxBackend through the Backend protocol: numpy-exact outputs, real batching, errors before queueing."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferline.backends.base import Backend, TensorSpec, UnsupportedOperationError
from inferline.backends.onnx import OnnxBackend
from inferline.config import OnnxDeploymentConfig
from inferline.errors import InvalidRequestError
from inferline.types import Request, SamplingParams
from tests.runners.onnx_models import linear, write_doubler, write_linear, write_masked


def loaded(path: Path, **settings: int) -> OnnxBackend:
    backend = OnnxBackend(OnnxDeploymentConfig(name=path.stem, source=str(path), **settings))
    asyncio.run(backend.load())
    return backend


@pytest.fixture
def linear_backend(tmp_path: Path) -> Iterator[OnnxBackend]:
    backend = loaded(write_linear(tmp_path / "linear.onnx"), max_batch_size=64, max_queue_delay_us=20_000)
    yield backend
    asyncio.run(backend.unload())


def test_protocol_metadata_and_lifecycle(tmp_path: Path) -> None:
    path = write_linear(tmp_path / "linear.onnx")
    backend = OnnxBackend(OnnxDeploymentConfig(name="lin", source=str(path), version="3"))
    assert isinstance(backend, Backend)
    assert not backend.health()
    assert backend.stats().queue_depth == 0
    asyncio.run(backend.load())
    meta = backend.metadata
    assert (meta.name, meta.kind, meta.version, meta.platform) == ("lin", "tensor", "3", "onnxruntime_onnx")
    assert meta.inputs == [TensorSpec("x", "FP32", [-1, 4])]
    assert meta.outputs == [TensorSpec("y", "FP32", [-1, 3])]
    assert backend.health()
    with pytest.raises(UnsupportedOperationError, match="OIP infer"):
        asyncio.run(backend.embed(["hi"]))
    with pytest.raises(UnsupportedOperationError, match="cannot generate"):
        backend.generate(Request("r", [1], SamplingParams()))
    asyncio.run(backend.unload())
    assert not backend.health()


def test_outputs_equal_numpy(linear_backend: OnnxBackend, tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    outputs = asyncio.run(linear_backend.infer({"x": x}))
    np.testing.assert_allclose(outputs["y"], linear(x), rtol=1e-5, atol=1e-6)

    masked = loaded(write_masked(tmp_path / "masked.onnx"))
    ids = np.array([[7, 8, 9]], dtype=np.int32)  # INT32 is cast to the model's INT64 without loss
    outputs = asyncio.run(masked.infer({"ids": ids, "keep": np.array([[False, True, True]])}))
    np.testing.assert_array_equal(outputs["masked"], [[0, 8, 9]])
    np.testing.assert_array_equal(outputs["any_kept"], [True])
    asyncio.run(masked.unload())


def test_concurrent_requests_are_batched_and_get_their_own_rows(linear_backend: OnnxBackend) -> None:
    rng = np.random.default_rng(2)
    requests = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(24)]

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(linear_backend.infer({"x": x}) for x in requests))

    results = asyncio.run(main())
    for x, outputs in zip(requests, results, strict=True):
        np.testing.assert_allclose(outputs["y"], linear(x), rtol=1e-5, atol=1e-6)
    stats = linear_backend.batcher.stats()
    assert stats.num_batches <= 6  # 48 rows under max_batch_size 64: one or two batches on an idle box
    assert stats.mean_batch_size > 8


def test_requests_of_different_shapes_share_a_batch(tmp_path: Path) -> None:
    backend = loaded(write_doubler(tmp_path / "doubler.onnx"), max_queue_delay_us=20_000)
    requests = [np.full((1, 2 + i % 3), i, dtype=np.float32) for i in range(9)]

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(backend.infer({"x": x}) for x in requests))

    for x, outputs in zip(requests, asyncio.run(main()), strict=True):
        np.testing.assert_array_equal(outputs["y"], 2 * x)
    assert backend.batcher.stats().num_batches <= 3
    asyncio.run(backend.unload())


def test_a_model_without_a_batch_dimension_runs_requests_one_by_one(tmp_path: Path) -> None:
    backend = loaded(write_linear(tmp_path / "fixed.onnx", batch_dim=1), max_queue_delay_us=20_000)
    requests = [np.full((1, 4), i, dtype=np.float32) for i in range(4)]

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(backend.infer({"x": x}) for x in requests))

    for x, outputs in zip(requests, asyncio.run(main()), strict=True):
        np.testing.assert_allclose(outputs["y"], linear(x), rtol=1e-5, atol=1e-6)
    assert backend.batcher.stats().num_batches == 4
    asyncio.run(backend.unload())


@pytest.mark.parametrize(
    ("inputs", "param", "message"),
    [
        ({"X": np.ones((1, 4), np.float32)}, "X", "unknown input 'X'"),
        ({}, "x", "missing input 'x'"),
        ({"x": np.ones((1, 4), np.float64)}, "x", "'x' has datatype FP64; the model expects FP32"),
        ({"x": np.ones((1, 3), np.float32)}, "x", r"'x' has shape \[1, 3\]; the model expects \[-1, 4\]"),
        ({"x": np.ones((65, 4), np.float32)}, None, r"65 rows is larger than max_batch_size \(64\)"),
    ],
)
def test_bad_requests_are_refused_before_they_queue(
    linear_backend: OnnxBackend, inputs: dict[str, np.ndarray], param: str | None, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message) as excinfo:
        asyncio.run(linear_backend.infer(inputs))
    assert excinfo.value.param == param
    assert linear_backend.batcher.stats().num_batches == 0


def test_inputs_must_agree_on_the_batch_dimension(tmp_path: Path) -> None:
    backend = loaded(write_masked(tmp_path / "masked.onnx"))
    with pytest.raises(InvalidRequestError, match="ids: 2, keep: 1"):
        asyncio.run(backend.infer({"ids": np.ones((2, 3), np.int64), "keep": np.ones((1, 3), bool)}))
    asyncio.run(backend.unload())
