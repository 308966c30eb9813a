"""The JSON that `inferline bench ... --json` writes: schema `inferline-bench/1`, documented and checked.

A document is one run: `kind` "serve" (latency and throughput per load point, over HTTP) or
"offline" (engine throughput per batch size). Times are seconds, throughputs per second, token counts
as the server reported them. Fields are only ever added within version 1 (readers skip fields they do
not know); a rename or a change of meaning makes it `inferline-bench/2`. `inferline bench schema`
prints this as JSON Schema (draft 2020-12); `validate` checks a document against it with the subset
of JSON Schema used here (type, required, properties, items, const, enum, minimum), so no extra
dependency is needed.
"""

from __future__ import annotations

from typing import Any

from inferline.errors import InvalidRequestError

SCHEMA_VERSION = "inferline-bench/1"

_NUMBER = {"type": "number"}
_COUNT = {"type": "integer", "minimum": 0}
_RATE = {"type": "number", "minimum": 0}
_TEXT = {"type": "string"}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


DISTRIBUTION = _nullable(
    _object(
        {
            "count": _COUNT,
            "mean": _NUMBER,
            "median": _NUMBER,
            "p95": _NUMBER,
            "p99": _NUMBER,
            "max": _NUMBER,
        }
    )
)

REQUEST = _object(
    {
        "send_offset_s": _NUMBER,  # send time after the point's start
        "ttft_s": _nullable(_NUMBER),
        "tpot_s": _nullable(_NUMBER),
        "e2e_s": _NUMBER,
        "prompt_tokens": _nullable(_COUNT),
        "output_tokens": _COUNT,
        "error": _nullable(_TEXT),
    }
)

SERVE_POINT = _object(
    {
        "mode": {"type": "string", "enum": ["closed", "open"]},
        "concurrency": _nullable(_COUNT),
        # req/s; null for closed loops, the string "inf" when every request left at once
        "request_rate": {"type": ["number", "string", "null"]},
        "num_requests": _COUNT,
        "num_succeeded": _COUNT,
        "num_failed": _COUNT,
        "duration_s": _NUMBER,
        "input_tokens": _COUNT,
        "output_tokens": _COUNT,
        "request_throughput_rps": _RATE,
        "output_throughput_tps": _RATE,
        "total_token_throughput_tps": _RATE,
        "goodput_rps": _nullable(_RATE),
        "ttft_s": DISTRIBUTION,
        "tpot_s": DISTRIBUTION,
        "itl_s": DISTRIBUTION,
        "e2e_s": DISTRIBUTION,
        "errors": {"type": "array", "items": _object({"message": _TEXT, "count": _COUNT})},
        "requests": {"type": "array", "items": REQUEST},
    }
)

OFFLINE_POINT = _object(
    {
        "batch_size": _COUNT,
        "elapsed_s": _NUMBER,  # median of the repeats, prefill included
        "input_tokens": _COUNT,
        "output_tokens": _COUNT,
        "output_throughput_tps": _RATE,
        "total_token_throughput_tps": _RATE,
    }
)

_ENVIRONMENT = {
    "schema": {"type": "string", "const": SCHEMA_VERSION},
    "created": _TEXT,  # ISO 8601, UTC
    "inferline_version": _TEXT,
    "git_commit": _nullable(_TEXT),  # `git describe --always --dirty` of the source tree, if any
    "host": _TEXT,  # the machine the benchmark ran on
    "label": _TEXT,  # the run's name in plots
}

SERVE = _object(
    {
        **_ENVIRONMENT,
        "kind": {"type": "string", "const": "serve"},
        "server": _object(
            {
                "base_url": _TEXT,
                "model": _TEXT,
                "endpoint": _TEXT,
                "models_listed": {"type": "array", "items": _TEXT},
            }
        ),
        "workload": _object(
            {
                "source": {"type": "string", "enum": ["synthetic", "dataset"]},
                "dataset": _nullable(_TEXT),
                "input_len": _COUNT,
                "output_len": _COUNT,
                "len_jitter": _NUMBER,
                "num_prompts": _COUNT,
                "ignore_eos": {"type": "boolean"},
                "temperature": _NUMBER,
                "seed": _COUNT,
            }
        ),
        "load": _object({"warmup": _COUNT, "burstiness": _NUMBER, "max_concurrency": _nullable(_COUNT)}),
        "slo": _nullable(
            _object({"ttft_s": _nullable(_NUMBER), "tpot_s": _nullable(_NUMBER), "e2e_s": _nullable(_NUMBER)})
        ),
        "points": {"type": "array", "items": SERVE_POINT},
    }
)

OFFLINE = _object(
    {
        **_ENVIRONMENT,
        "kind": {"type": "string", "const": "offline"},
        "engine": _object({"model": _TEXT, "device": _TEXT, "dtype": _TEXT}),
        "workload": _object({"input_len": _COUNT, "output_len": _COUNT, "repeats": _COUNT, "seed": _COUNT}),
        "points": {"type": "array", "items": OFFLINE_POINT},
    }
)

_BY_KIND = {"serve": SERVE, "offline": OFFLINE}


def json_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_VERSION,
        "title": "inferline bench result",
        "oneOf": [SERVE, OFFLINE],
    }


def validate(document: Any, source: str = "document") -> None:
    """Raise InvalidRequestError naming the first field that does not fit the schema."""
    if not isinstance(document, dict) or document.get("schema") != SCHEMA_VERSION:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise InvalidRequestError(f"{source} is not an {SCHEMA_VERSION} result (schema: {found!r})", "schema")
    schema = _BY_KIND.get(document.get("kind"))  # type: ignore[arg-type]
    if schema is None:
        raise InvalidRequestError(f"{source}: kind must be one of {sorted(_BY_KIND)}", "kind")
    problem = _check(document, schema, "")
    if problem is not None:
        raise InvalidRequestError(f"{source} does not fit {SCHEMA_VERSION}: {problem}", "schema")


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "null": (type(None),),
}


def _is(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[type_name])


def _check(value: Any, schema: dict[str, Any], path: str) -> str | None:
    problem = _check_value(value, schema, path or "the top level")
    if problem is not None or value is None:
        return problem
    if isinstance(value, dict):
        return _check_fields(value, schema, path)
    if isinstance(value, list) and "items" in schema:
        items = (_check(item, schema["items"], f"{path}[{i}]") for i, item in enumerate(value))
        return next((p for p in items if p is not None), None)
    return None


def _check_value(value: Any, schema: dict[str, Any], where: str) -> str | None:
    types = schema.get("type")
    names = [] if types is None else types if isinstance(types, list) else [types]
    if names and not any(_is(value, name) for name in names):
        return f"{where} must be {' or '.join(names)}; got {type(value).__name__}"
    if value is None:
        return None
    if "const" in schema and value != schema["const"]:
        return f"{where} must be {schema['const']!r}; got {value!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} must be one of {schema['enum']}; got {value!r}"
    if "minimum" in schema and value < schema["minimum"]:
        return f"{where} must be at least {schema['minimum']}; got {value!r}"
    return None


def _check_fields(value: dict[str, Any], schema: dict[str, Any], path: str) -> str | None:
    prefix = f"{path}." if path else ""
    missing = [name for name in schema.get("required", []) if name not in value]
    if missing:
        return f"{prefix}{missing[0]} is missing"
    properties = schema.get("properties", {})
    # Fields this reader does not know were added later within the version: skip them.
    known = (
        _check(item, properties[name], prefix + name) for name, item in value.items() if name in properties
    )
    return next((p for p in known if p is not None), None)
