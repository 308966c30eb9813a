"""OnnxRunner: OIP metadata from the session, numpy-exact outputs, and clear errors for bad inputs."""

from pathlib import Path

import numpy as np
import pytest

from inferline.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError
from inferline.runners.onnx import OnnxRunner, default_num_threads, is_lossless_cast

from .onnx_models import linear, write_doubler, write_linear, write_masked, write_strings


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    write_linear(folder / "linear.onnx")
    write_linear(folder / "fixed.onnx", batch_dim=1)
    write_masked(folder / "masked.onnx")
    write_doubler(folder / "doubler.onnx")
    write_strings(folder / "strings.onnx")
    return folder


def test_metadata_maps_to_oip_datatypes_and_dynamic_dims(models: Path) -> None:
    runner = OnnxRunner(models / "masked.onnx")
    assert [(t.name, t.datatype, t.shape) for t in runner.inputs] == [
        ("ids", "INT64", [-1, 3]),
        ("keep", "BOOL", [-1, 3]),
    ]
    assert [(t.name, t.datatype, t.shape) for t in runner.outputs] == [
        ("masked", "INT64", [-1, 3]),
        ("any_kept", "BOOL", [-1]),
    ]
    assert runner.batchable
    assert not OnnxRunner(models / "fixed.onnx").batchable
    assert [(t.datatype, t.shape) for t in OnnxRunner(models / "strings.onnx").inputs] == [("BYTES", [-1])]
    assert 1 <= default_num_threads() <= 4
    assert runner.session.get_session_options().intra_op_num_threads == default_num_threads()


def test_outputs_equal_numpy(models: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        OnnxRunner(models / "linear.onnx").run({"x": x})["y"], linear(x), rtol=1e-5, atol=1e-6
    )
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    keep = np.array([[True, False, True], [False, False, False]])
    outputs = OnnxRunner(models / "masked.onnx").run({"ids": ids, "keep": keep})
    np.testing.assert_array_equal(outputs["masked"], np.where(keep, ids, 0))
    assert outputs["masked"].dtype == np.int64
    np.testing.assert_array_equal(outputs["any_kept"], [True, False])
    strings = np.array(["héllo".encode(), b"world"], dtype=object)
    assert OnnxRunner(models / "strings.onnx").run({"s": strings})["out"].tolist() == ["héllo", "world"]


def test_lossless_casts_are_made(models: Path) -> None:
    runner = OnnxRunner(models / "masked.onnx")
    feeds = runner.validate({"ids": np.array([[1, 2, 3]], dtype=np.int32), "keep": np.ones((1, 3), bool)})
    assert feeds["ids"].dtype == np.int64
    x16 = np.ones((2, 4), dtype=np.float16)
    assert OnnxRunner(models / "linear.onnx").validate({"x": x16})["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("model", "inputs", "param", "message"),
    [
        ("linear", {"x": np.ones((1, 4), np.float32), "z": np.ones(1)}, "z", "unknown input 'z'.*x \\(FP32"),
        ("masked", {"ids": np.ones((1, 3), np.int64)}, "keep", "missing input 'keep'"),
        ("linear", {"x": np.ones((1, 4), np.float64)}, "x", "'x' has datatype FP64; the model expects FP32"),
        ("masked", {"ids": np.ones((1, 3), np.uint64), "keep": np.ones((1, 3), bool)}, "ids", "UINT64"),
        ("masked", {"ids": np.ones((1, 3), np.int64), "keep": np.ones((1, 3), np.int64)}, "keep", "BOOL"),
        ("linear", {"x": np.ones((2, 5), np.float32)}, "x", r"shape \[2, 5\]; the model expects \[-1, 4\]"),
        ("linear", {"x": np.ones(4, np.float32)}, "x", r"shape \[4\]"),
        ("strings", {"s": np.ones(2, np.float32)}, "s", "expects BYTES"),
        ("strings", {"s": np.array([b"\xff"], dtype=object)}, "s", "not valid UTF-8"),
    ],
)
def test_bad_inputs_name_the_input(
    models: Path, model: str, inputs: dict[str, np.ndarray], param: str, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message) as excinfo:
        OnnxRunner(models / f"{model}.onnx").run(inputs)
    assert excinfo.value.param == param


@pytest.mark.parametrize(
    ("got", "want", "lossless"),
    [
        (np.int32, np.int64, True),
        (np.uint8, np.int16, True),
        (np.bool_, np.int64, True),
        (np.float16, np.float32, True),
        (np.int32, np.float64, True),
        (np.int64, np.float64, False),  # numpy calls it "safe"; 53 mantissa bits say otherwise
        (np.int32, np.float32, False),
        (np.float64, np.float32, False),
        (np.uint64, np.int64, False),
        (np.int64, np.bool_, False),
    ],
)
def test_which_casts_are_lossless(got: type, want: type, lossless: bool) -> None:
    assert is_lossless_cast(np.dtype(got), np.dtype(want)) is lossless


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        OnnxRunner(tmp_path / "nope.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxRunner(tmp_path / "broken.onnx")


def test_a_folder_with_one_model(tmp_path: Path) -> None:
    path = write_linear(tmp_path / "model.onnx")
    assert OnnxRunner(tmp_path).path == path
