"""ONNX Runtime models: named numpy arrays in, named numpy arrays out, checked against the model.

Design note: every request is checked against the session's input metadata before it joins a batch
(names, datatype, rank, fixed dimensions), so one malformed request gets a 400 naming its input
instead of failing the batch it would have shared. Arrays are cast only when the cast is lossless
(INT32 -> INT64, FP16 -> FP32 ...). The session uses the CPU provider with few threads that do not
spin: on a small box the event loop, the tokenizer and other models need the cores too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inferline.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError

logger = logging.getLogger(__name__)

# ONNX Runtime type string -> (OIP datatype, numpy dtype)
_ORT_TYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "tensor(bool)": ("BOOL", np.dtype(np.bool_)),
    "tensor(uint8)": ("UINT8", np.dtype(np.uint8)),
    "tensor(uint16)": ("UINT16", np.dtype(np.uint16)),
    "tensor(uint32)": ("UINT32", np.dtype(np.uint32)),
    "tensor(uint64)": ("UINT64", np.dtype(np.uint64)),
    "tensor(int8)": ("INT8", np.dtype(np.int8)),
    "tensor(int16)": ("INT16", np.dtype(np.int16)),
    "tensor(int32)": ("INT32", np.dtype(np.int32)),
    "tensor(int64)": ("INT64", np.dtype(np.int64)),
    "tensor(float16)": ("FP16", np.dtype(np.float16)),
    "tensor(float)": ("FP32", np.dtype(np.float32)),
    "tensor(double)": ("FP64", np.dtype(np.float64)),
    "tensor(string)": ("BYTES", np.dtype(object)),
}
_MAX_THREADS = 4


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the Open Inference Protocol describes it."""

    name: str
    datatype: str
    """OIP datatype: BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64, BYTES."""
    shape: list[int]
    """-1 for a dynamic dimension."""
    dtype: np.dtype[Any]
    """numpy dtype ONNX Runtime takes or returns (object for BYTES)."""

    @property
    def has_batch_dim(self) -> bool:
        """The first dimension is dynamic, so requests can be stacked along it."""
        return bool(self.shape) and self.shape[0] == -1


def default_num_threads() -> int:
    """Intra-op threads: the cores this process may use, at most 4 (small models stop scaling there)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(available, _MAX_THREADS))


class OnnxRunner:
    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        self.path = _model_file(Path(path).expanduser())
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or default_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle ORT threads spin for a while by default; that steals the cores a 2-core box needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ModelLoadError(f"ONNX Runtime cannot load {self.path}: {error}") from None
        self.inputs = [_tensor_info(node, "input", self.path) for node in self.session.get_inputs()]
        self.outputs = []
        for node in self.session.get_outputs():
            if node.type in _ORT_TYPES:
                self.outputs.append(_tensor_info(node, "output", self.path))
            else:  # e.g. sklearn-onnx's ZipMap: a sequence of maps has no OIP tensor form
                logger.warning(
                    "%s: output %r of type %s is not a tensor; not served", self.path, node.name, node.type
                )
        if not self.outputs:
            raise ModelLoadError(f"{self.path} has no tensor outputs to serve")
        self._inputs_by_name = {info.name: info for info in self.inputs}

    @property
    def batchable(self) -> bool:
        """Every input and output has a dynamic first dimension, so requests can be stacked."""
        return bool(self.inputs) and all(info.has_batch_dim for info in [*self.inputs, *self.outputs])

    def validate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs as the session takes them (losslessly cast), or InvalidRequestError naming the
        input that is unknown, missing, of the wrong datatype or of the wrong shape."""
        unknown = [name for name in inputs if name not in self._inputs_by_name]
        if unknown:
            raise InvalidRequestError(
                f"unknown input {unknown[0]!r}; this model takes {_describe(self.inputs)}", unknown[0]
            )
        missing = [info for info in self.inputs if info.name not in inputs]
        if missing:
            raise InvalidRequestError(
                f"missing input {missing[0].name!r}; this model takes {_describe(self.inputs)}",
                missing[0].name,
            )
        return {info.name: _checked(info, np.asarray(inputs[info.name])) for info in self.inputs}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate, run the session once, return every tensor output by name."""
        feeds = self.validate(inputs)
        names = [info.name for info in self.outputs]
        return dict(zip(names, self.session.run(names, feeds), strict=True))


def _model_file(path: Path) -> Path:
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"))
        if len(candidates) != 1:
            raise ModelNotFoundError(f"{path} must hold exactly one .onnx file; it holds {len(candidates)}")
        return candidates[0]
    if not path.is_file():
        raise ModelNotFoundError(f"ONNX model {path} does not exist; give the path of an .onnx file")
    return path


def _tensor_info(node: Any, role: str, path: Path) -> TensorInfo:
    if node.type not in _ORT_TYPES:
        raise ModelLoadError(
            f"{path}: {role} {node.name!r} has type {node.type}, which the Open Inference Protocol "
            f"cannot carry; supported: {', '.join(_ORT_TYPES)}"
        )
    datatype, dtype = _ORT_TYPES[node.type]
    # Symbolic ("batch") and unknown (None) dimensions are both "any size".
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape or []]
    return TensorInfo(node.name, datatype, shape, dtype)


def _describe(infos: list[TensorInfo]) -> str:
    return ", ".join(f"{info.name} ({info.datatype} {info.shape})" for info in infos)


def _checked(info: TensorInfo, array: np.ndarray) -> np.ndarray:
    array = _cast(info, array)
    expected = info.shape
    fits = len(array.shape) == len(expected) and all(
        want in (-1, got) for want, got in zip(expected, array.shape, strict=True)
    )
    if not fits:
        raise InvalidRequestError(
            f"input {info.name!r} has shape {list(array.shape)}; the model expects {expected} (-1: any size)",
            info.name,
        )
    return array


def _cast(info: TensorInfo, array: np.ndarray) -> np.ndarray:
    if info.datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise _dtype_error(info, array)
        try:  # ORT takes str elements; OIP delivers bytes.
            return np.array([_to_str(v) for v in array.reshape(-1)], dtype=object).reshape(array.shape)
        except UnicodeDecodeError:
            raise InvalidRequestError(
                f"input {info.name!r}: a BYTES element is not valid UTF-8", info.name
            ) from None
    if array.dtype == info.dtype:
        return array
    if not is_lossless_cast(array.dtype, info.dtype):
        raise _dtype_error(info, array)
    return array.astype(info.dtype)


def is_lossless_cast(got: np.dtype[Any], want: np.dtype[Any]) -> bool:
    if got.kind not in "biuf" or not np.can_cast(got, want, casting="safe"):
        return False
    # numpy calls INT64 -> FP64 "safe", but a float64 mantissa holds only 53 bits.
    return not (got.kind in "iu" and want.kind == "f" and got.itemsize >= want.itemsize)


def _dtype_error(info: TensorInfo, array: np.ndarray) -> InvalidRequestError:
    got = _oip_datatype(array.dtype)
    return InvalidRequestError(
        f"input {info.name!r} has datatype {got}; the model expects {info.datatype} "
        f"(send {info.datatype}, or a type that converts to it without loss)",
        info.name,
    )


def _oip_datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "OSU":
        return "BYTES"
    return next((name for name, candidate in _ORT_TYPES.values() if candidate == dtype), str(dtype))


def _to_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
