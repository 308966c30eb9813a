"""Small ONNX models built with the onnx helper API, and their numpy equivalents."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ONNX Runtime reads IR versions up to its own; pin both so a newer onnx package cannot outrun it.
_OPSET = helper.make_opsetid("", 17)
_IR_VERSION = 8

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10  # [4, 3]
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)  # [3]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[_OPSET], ir_version=_IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def write_linear(path: Path, batch_dim: str | int = "batch") -> Path:
    """y = x @ W + b; x: FP32 [batch, 4] -> y: FP32 [batch, 3]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 3])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")],
    )
    return _save(graph, path)


def linear(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) @ W + B


def write_masked(path: Path) -> Path:
    """ids: INT64 [batch, 3], keep: BOOL [batch, 3] -> masked = ids where keep else 0 (INT64 [batch, 3]),
    any_kept: BOOL [batch]."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["keep"], ["keep_i64"], to=TensorProto.INT64),
            helper.make_node("Mul", ["ids", "keep_i64"], ["masked"]),
            helper.make_node("ReduceMax", ["keep_i64"], ["any_i64"], keepdims=0, axes=[1]),
            helper.make_node("Cast", ["any_i64"], ["any_kept"], to=TensorProto.BOOL),
        ],
        "masked",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("keep", TensorProto.BOOL, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("masked", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("any_kept", TensorProto.BOOL, ["batch"]),
        ],
    )
    return _save(graph, path)


def write_doubler(path: Path) -> Path:
    """y = 2 x with a dynamic second dimension; x: FP32 [batch, seq] -> y: FP32 [batch, seq]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
    )
    return _save(graph, path)


def write_strings(path: Path) -> Path:
    """Identity on a string tensor: s: BYTES [batch] -> out: BYTES [batch]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["out"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("out", TensorProto.STRING, ["batch"])],
    )
    return _save(graph, path)
