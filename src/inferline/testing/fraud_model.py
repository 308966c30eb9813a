"""A fraud-style classifier for stream tests and benchmarks: an MLP on 30 numeric features, exported to
ONNX (the `onnx` package: a test dependency) with fixed random weights, and its numpy twin. More and
wider hidden layers make a slow model (back-pressure tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUM_FEATURES = 30
_OPSET = 17
_IR_VERSION = 8  # ONNX Runtime reads IR versions up to its own; pinned so a newer onnx cannot outrun it


def weights(hidden: int = 64, num_hidden_layers: int = 1, seed: int = 0) -> list[np.ndarray]:
    """The weight matrices, input to output: [30, hidden], [hidden, hidden]..., [hidden, 2]."""
    rng = np.random.default_rng(seed)
    sizes = [NUM_FEATURES, *[hidden] * num_hidden_layers, 2]
    return [
        (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        for n_in, n_out in zip(sizes, sizes[1:], strict=False)
    ]


def write_fraud_mlp(path: Path, hidden: int = 64, num_hidden_layers: int = 1, seed: int = 0) -> Path:
    """features: FP32 [batch, 30] -> probabilities: FP32 [batch, 2] (legitimate, fraud)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    matrices = weights(hidden, num_hidden_layers, seed)
    nodes, previous = [], "features"
    for index in range(len(matrices)):
        nodes.append(helper.make_node("MatMul", [previous, f"W{index}"], [f"z{index}"]))
        previous = f"z{index}"
        if index < len(matrices) - 1:
            nodes.append(helper.make_node("Relu", [previous], [f"h{index}"]))
            previous = f"h{index}"
    nodes.append(helper.make_node("Softmax", [previous], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "fraud_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", NUM_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(m, f"W{i}") for i, m in enumerate(matrices)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def fraud_probabilities(features: np.ndarray, hidden: int = 64, num_hidden_layers: int = 1) -> np.ndarray:
    """What the exported model computes: [batch, 30] -> [batch, 2]."""
    matrices = weights(hidden, num_hidden_layers)
    x = features.astype(np.float32)
    for matrix in matrices[:-1]:
        x = np.maximum(x @ matrix, 0)
    z = x @ matrices[-1]
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
