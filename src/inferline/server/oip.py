"""Open Inference Protocol v2 (KServe / Triton): health, model metadata and infer.

Tensors travel as JSON (`data`, row-major, flat or nested) or with Triton's binary-data extension
(`Inference-Header-Content-Length` splits a JSON header from raw tensor bytes; tritonclient uses it by
default). Errors use the protocol's shape, `{"error": "..."}`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from inferline.backends.base import ModelMetadata
from inferline.errors import InvalidRequestError
from inferline.router.deployments import Deployment, DeploymentPool
from inferline.router.request import Caller, WorstCase
from inferline.router.router import Router
from inferline.server.auth import Tenant

_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_HEADER_LENGTH = "inference-header-content-length"


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    for name, dtype in _DTYPES.items():
        if array.dtype == dtype:
            return name
    raise InvalidRequestError(f"output dtype {array.dtype} has no Open Inference Protocol datatype")


def _shape(raw: dict[str, Any], name: str) -> list[int]:
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidRequestError(f"input {name!r}: shape must be a list of non-negative integers", name)
    if int(np.prod(shape, dtype=np.int64)) > 1 << 26:
        raise InvalidRequestError(f"input {name!r}: shape {shape} has more than {1 << 26} elements", name)
    return shape


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        return [x for row in data for x in _flatten(row)]
    return data


def _decode_bytes_elements(buffer: bytes, count: int, name: str) -> np.ndarray:
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(buffer):
            raise InvalidRequestError(f"input {name!r}: BYTES binary data is truncated", name)
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        items.append(buffer[offset : offset + length])
        offset += length
    return np.array(items, dtype=object)


def parse_input(raw: Any, binary: memoryview | None, cursor: int) -> tuple[str, np.ndarray, int]:
    """One request input as a numpy array; returns (name, array, new binary cursor)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidRequestError(
            "each input needs a string 'name', a 'shape', a 'datatype' and 'data'", "inputs"
        )
    name = raw["name"]
    shape = _shape(raw, name)
    datatype = raw.get("datatype")
    if datatype != "BYTES" and datatype not in _DTYPES:
        raise InvalidRequestError(f"input {name!r}: unknown datatype {datatype!r}", name)
    size = (raw.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        array, cursor = _binary_input(name, shape, datatype, int(size), binary, cursor)
        return name, array, cursor
    return name, _json_input(name, shape, datatype, raw.get("data")), cursor


def _binary_input(
    name: str, shape: list[int], datatype: str, size: int, binary: memoryview | None, cursor: int
) -> tuple[np.ndarray, int]:
    if binary is None or cursor + size > len(binary):
        raise InvalidRequestError(f"input {name!r}: binary_data_size runs past the request body", name)
    chunk = bytes(binary[cursor : cursor + size])
    cursor += size
    count = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        return _decode_bytes_elements(chunk, count, name).reshape(shape), cursor
    if len(chunk) != count * _DTYPES[datatype].itemsize:
        raise InvalidRequestError(
            f"input {name!r}: {len(chunk)} bytes do not hold shape {shape} of {datatype}", name
        )
    return np.frombuffer(chunk, dtype=_DTYPES[datatype]).reshape(shape), cursor


def _json_input(name: str, shape: list[int], datatype: str, data: Any) -> np.ndarray:
    values = _flatten(data)
    if len(values) != int(np.prod(shape, dtype=np.int64)):
        raise InvalidRequestError(f"input {name!r}: {len(values)} values do not fill shape {shape}", name)
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise InvalidRequestError(f"input {name!r}: BYTES data must be strings", name)
        return np.array([v.encode() for v in values], dtype=object).reshape(shape)
    if datatype == "BOOL" and not all(isinstance(v, bool) for v in values):
        raise InvalidRequestError(f"input {name!r}: BOOL data must be true or false", name)
    try:
        return np.array(values, dtype=_DTYPES[datatype]).reshape(shape)
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidRequestError(f"input {name!r}: data does not fit {datatype}: {error}", name) from None


def _encode_output(name: str, array: np.ndarray, as_binary: bool) -> tuple[dict[str, Any], bytes]:
    datatype = datatype_of(array)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        if as_binary:
            blob = b"".join(struct.pack("<I", len(v)) + v for v in items)
            entry["parameters"] = {"binary_data_size": len(blob)}
            return entry, blob
        entry["data"] = [v.decode("utf-8", errors="replace") for v in items]
        return entry, b""
    if as_binary:
        blob = np.ascontiguousarray(array).tobytes()
        entry["parameters"] = {"binary_data_size": len(blob)}
        return entry, blob
    entry["data"] = array.reshape(-1).tolist()
    return entry, b""


def metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    def specs(items: list[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in items]

    return {
        "name": meta.name,
        "versions": [meta.version],
        "platform": meta.platform,
        "inputs": specs(meta.inputs),
        "outputs": specs(meta.outputs),
    }


def _split_body(request: Request, body: bytes) -> tuple[dict[str, Any], memoryview | None]:
    header_length = request.headers.get(_HEADER_LENGTH)
    try:
        if header_length is None:
            return json.loads(body), None
        length = int(header_length)
        if not 0 <= length <= len(body):
            raise InvalidRequestError(f"{_HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        return json.loads(body[:length]), memoryview(body)[length:]
    except (ValueError, UnicodeDecodeError) as error:
        if isinstance(error, InvalidRequestError):
            raise
        raise InvalidRequestError(f"request body is not valid JSON: {error}") from None


def _wants_binary(payload: dict[str, Any]) -> dict[str, bool]:
    default = bool((payload.get("parameters") or {}).get("binary_data_output", False))
    wanted = {}
    for output in payload.get("outputs") or []:
        if isinstance(output, dict) and isinstance(output.get("name"), str):
            wanted[output["name"]] = bool((output.get("parameters") or {}).get("binary_data", default))
    return wanted or {"*": default}


def _parse_inputs(payload: dict[str, Any], binary: memoryview | None) -> dict[str, np.ndarray]:
    raw_inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequestError("'inputs' must be a non-empty list of tensors", "inputs")
    inputs, cursor = {}, 0
    for raw in raw_inputs:
        name, array, cursor = parse_input(raw, binary, cursor)
        inputs[name] = array
    return inputs


def _infer_response(
    name: str, deployment: Deployment, payload: dict[str, Any], outputs: dict[str, np.ndarray]
) -> Response:
    wanted = _wants_binary(payload)
    selected = list(outputs) if "*" in wanted else [n for n in outputs if n in wanted]
    entries, blobs = [], []
    for output_name in selected:
        as_binary = wanted.get(output_name, wanted.get("*", False))
        entry, blob = _encode_output(output_name, outputs[output_name], as_binary)
        entries.append(entry)
        blobs.append(blob)
    header: dict[str, Any] = {
        "model_name": name,
        "model_version": deployment.config.version,
        "outputs": entries,
    }
    if isinstance(payload.get("id"), str):
        header["id"] = payload["id"]
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    headers = deployment.headers
    if any(blobs):
        headers[_HEADER_LENGTH] = str(len(header_bytes))
        return Response(
            header_bytes + b"".join(blobs), media_type="application/octet-stream", headers=headers
        )
    return Response(header_bytes, media_type="application/json", headers=headers)


def oip_router(router: Router, tenant: Callable[..., Awaitable[Tenant]]) -> APIRouter:
    pool: DeploymentPool = router.pool
    api = APIRouter(prefix="/v2", dependencies=[Depends(tenant)])

    @api.get("")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "inferline", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    @api.get("/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get("/health/ready")
    async def ready() -> JSONResponse:
        ready = pool.is_ready(allow_failed=router.config.on_load_failure == "serve_rest")
        return JSONResponse({"ready": ready, "failed": pool.failed}, status_code=200 if ready else 503)

    @api.get("/models/{name}/ready")
    @api.get("/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> dict[str, Any]:
        deployment = pool.get(name)
        return {"name": name, "ready": deployment.ready}

    @api.get("/models/{name}")
    @api.get("/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return metadata_json(pool.find(name).backend.metadata)

    @api.post("/models/{name}/infer")
    @api.post("/models/{name}/versions/{version}/infer")
    async def infer(
        name: str, request: Request, version: str | None = None, who: Tenant = Depends(tenant)
    ) -> Response:
        router.check_ready(name)  # a model that cannot serve says so before its inputs are judged
        payload, binary = _split_body(request, await request.body())
        inputs = _parse_inputs(payload, binary)

        async def attempt(deployment: Deployment, final: bool) -> dict[str, np.ndarray]:
            return await deployment.within(deployment.backend.infer(inputs))

        caller = Caller(str(request.scope["state"]["request_id"]), who.principal, who.priority)
        routed = await router.run(name, caller, attempt, WorstCase(0, 0))
        await routed.complete(0, 0)
        return _infer_response(name, routed.deployment, payload, routed.value)

    return api
