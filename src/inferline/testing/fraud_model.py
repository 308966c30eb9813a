"""A fraud-style classifier for stream tests and benchmarks: an MLP on 30 numeric features, exported to
ONNX (the `onnx` package: a test dependency) with fixed random weights, and its numpy twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUM_FEATURES = 30
HIDDEN = 64
_OPSET = 17
_IR_VERSION = 8  # ONNX Runtime reads IR versions up to its own; pinned so a newer onnx cannot outrun it


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((NUM_FEATURES, HIDDEN)) / np.sqrt(NUM_FEATURES)).astype(np.float32),
        "b1": np.zeros(HIDDEN, dtype=np.float32),
        "W2": (rng.standard_normal((HIDDEN, 2)) / np.sqrt(HIDDEN)).astype(np.float32),
        "b2": np.zeros(2, dtype=np.float32),
    }


def write_fraud_mlp(path: Path, seed: int = 0) -> Path:
    """features: FP32 [batch, 30] -> probabilities: FP32 [batch, 2] (legitimate, fraud)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["features", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "fraud_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", NUM_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights(seed).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def fraud_probabilities(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """What the exported model computes: [batch, 30] -> [batch, 2]."""
    w = weights(seed)
    z = np.maximum(features.astype(np.float32) @ w["W1"] + w["b1"], 0) @ w["W2"] + w["b2"]
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
