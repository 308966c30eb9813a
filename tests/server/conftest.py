"""A real `inferline serve` process on a loopback port, as users run it (the suite's shared one is the
`server` fixture of tests/conftest.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from inferline.bench.harness import free_port, wait_ready

BIN = Path(sys.executable).with_name("inferline")
API_KEY = "sk-test-alpha"
OTHER_KEY = "sk-test-beta"


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    """The config as YAML on a free loopback port (read it back with read_port)."""
    config_path = tmp_path / "inferline.yaml"
    config_path.write_text(yaml.safe_dump({**config, "port": free_port()}))
    return config_path


def read_port(tmp_path: Path) -> int:
    return int(yaml.safe_load((tmp_path / "inferline.yaml").read_text())["port"])


def start_server(
    config: dict[str, Any], tmp_path: Path, ready_timeout_s: float = 90, args: tuple[str, ...] = ()
) -> ServerProcess:
    config_path = write_config(tmp_path, config)
    port = read_port(tmp_path)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN), "serve", "--config", str(config_path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    wait_ready(process, f"{server.url}/ready", log_path, ready_timeout_s)
    return server


def kv_blocks_used(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.url}/metrics").text
    match = re.search(
        r'^inferline_kv_cache_blocks_used\{deployment="smollm2-135m-instruct"\} (\S+)$', metrics, re.M
    )
    assert match, "the KV gauge is missing from /metrics"
    return float(match.group(1))


def llm_deployment(**engine: Any) -> dict[str, Any]:
    # float32: greedy answers that do not depend on the prefix cache. In int4 (the default) a prompt
    # tail after cached blocks runs through the int8-activation kernels and a full prompt through the
    # bfloat16 GEMM, and the 135M model's near-ties can tip either way (tests/engine/test_quantization.py
    # holds the int4 default to float32's quality).
    return {
        "name": "smollm2-135m-instruct",
        "kind": "llm",
        "source": "default",
        "aliases": ["default"],
        "engine": {"kv_cache_bytes": 256 << 20, "dtype": "float32", **engine},
    }


AFFINE_WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
AFFINE_BIAS = np.array([1.0, -1.0, 0.5], dtype=np.float32)


def write_affine_onnx(path: Path) -> Path:
    """y = x @ W + b, with x: FP32 [batch, 4] and y: FP32 [batch, 3]."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(AFFINE_WEIGHT, "W"), numpy_helper.from_array(AFFINE_BIAS, "b")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def write_typed_onnx(path: Path) -> Path:
    """One op per datatype: a+a (INT32), m where keep (INT64, BOOL), h+h (FP16), d*d (FP64)."""
    from onnx import TensorProto, helper, save

    def spec(name: str, dtype: int) -> Any:
        return helper.make_tensor_value_info(name, dtype, ["batch", 2])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "a"], ["a2"]),
            helper.make_node("Where", ["keep", "m", "m_zero"], ["m_kept"]),
            helper.make_node("Sub", ["m", "m"], ["m_zero"]),
            helper.make_node("Add", ["h", "h"], ["h2"]),
            helper.make_node("Mul", ["d", "d"], ["d2"]),
        ],
        "typed",
        [
            spec("a", TensorProto.INT32),
            spec("m", TensorProto.INT64),
            spec("keep", TensorProto.BOOL),
            spec("h", TensorProto.FLOAT16),
            spec("d", TensorProto.DOUBLE),
        ],
        [
            spec("a2", TensorProto.INT32),
            spec("m_kept", TensorProto.INT64),
            spec("h2", TensorProto.FLOAT16),
            spec("d2", TensorProto.DOUBLE),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.graph.node.sort(key=lambda node: node.output[0] != "m_zero")  # topological: m_zero first
    save(model, path)
    return path
