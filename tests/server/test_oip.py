"""The Open Inference Protocol v2 routes, through tritonclient's HTTP client."""

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .conftest import AFFINE_BIAS, AFFINE_WEIGHT, API_KEY, ServerProcess


def auth() -> dict[str, str]:
    # A fresh dict each call: tritonclient writes Inference-Header-Content-Length into the dict it is given.
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live(headers=auth())
    assert client.is_server_ready(headers=auth())
    assert client.is_model_ready("affine", headers=auth())
    meta = client.get_model_metadata("affine", headers=auth())
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    embed_meta = client.get_model_metadata("all-minilm-l6-v2", headers=auth())
    assert embed_meta["inputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize("binary", [False, True])
def test_onnx_infer_matches_numpy(client: triton.InferenceServerClient, binary: bool) -> None:
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(
        "affine", [tensor], outputs=[triton.InferRequestedOutput("y", binary_data=binary)], headers=auth()
    )
    np.testing.assert_allclose(result.as_numpy("y"), x @ AFFINE_WEIGHT + AFFINE_BIAS, rtol=1e-5, atol=1e-6)


def test_concurrent_onnx_requests_each_get_their_own_rows(client: triton.InferenceServerClient) -> None:
    inputs = [np.full((1 + i % 3, 4), i, dtype=np.float32) for i in range(24)]
    pending = []
    for x in inputs:
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        pending.append(client.async_infer("affine", [tensor], headers=auth()))
    for x, request in zip(inputs, pending, strict=True):
        np.testing.assert_allclose(
            request.get_result().as_numpy("y"), x @ AFFINE_WEIGHT + AFFINE_BIAS, rtol=1e-5
        )


@pytest.mark.parametrize("binary", [False, True])
def test_embedding_model_over_oip(client: triton.InferenceServerClient, binary: bool) -> None:
    texts = np.array(
        [b"The cat sits on the mat.", b"A cat is sitting on a mat.", b"Stock markets fell."], dtype=object
    )
    tensor = triton.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=binary)
    result = client.infer("all-minilm-l6-v2", [tensor], headers=auth())
    vectors = result.as_numpy("embedding")
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_bad_tensors_are_clear_400s(client: triton.InferenceServerClient) -> None:
    wrong_name = triton.InferInput("z", [1, 4], "FP32")
    wrong_name.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="'z'") as error:
        client.infer("affine", [wrong_name], headers=auth())
    assert error.value.status() == "400"
    wrong_shape = triton.InferInput("x", [2, 5], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="x") as error:
        client.infer("affine", [wrong_shape], headers=auth())
    assert error.value.status() == "400"
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("nope", headers=auth())
    assert error.value.status() == "404"


@pytest.mark.parametrize("binary", [False, True])
def test_every_numeric_datatype_round_trips(client: triton.InferenceServerClient, binary: bool) -> None:
    values = {
        "a": (np.array([[1, -2], [3, 4]], dtype=np.int32), "INT32"),
        "m": (np.array([[2**40, 5], [-7, 9]], dtype=np.int64), "INT64"),
        "keep": (np.array([[True, False], [False, True]]), "BOOL"),
        "h": (np.array([[0.5, 1.25], [-2.0, 3.5]], dtype=np.float16), "FP16"),
        "d": (np.array([[1e-200, 3.0], [2.5, -1.5]], dtype=np.float64), "FP64"),
    }
    tensors = []
    for name, (array, datatype) in values.items():
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("a2", "m_kept", "h2", "d2")]
    result = client.infer("typed", tensors, outputs=outputs, headers=auth())
    np.testing.assert_array_equal(result.as_numpy("a2"), values["a"][0] * 2)
    np.testing.assert_array_equal(result.as_numpy("m_kept"), np.where(values["keep"][0], values["m"][0], 0))
    np.testing.assert_array_equal(result.as_numpy("h2"), values["h"][0] * 2)
    np.testing.assert_array_equal(result.as_numpy("d2"), values["d"][0] ** 2)
    assert result.as_numpy("m_kept").dtype == np.int64
    assert result.as_numpy("h2").dtype == np.float16
