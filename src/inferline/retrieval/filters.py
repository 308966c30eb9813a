"""Attribute filters of OpenAI's vector-store search: a comparison `{type, key, value}` with type eq, ne,
gt, gte, lt, lte, in or nin, or a compound `{type: and|or, filters: [...]}`. They match files by the
attributes given when the file was added; a missing key matches nothing but `ne` and `nin`."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from inferline.errors import InvalidRequestError

Attributes = dict[str, str | float | bool]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda a, b: a in b,
    "nin": lambda a, b: a not in b,
}
MAX_DEPTH = 8


def check_filter(spec: Any, param: str = "filters", depth: int = 0) -> None:
    """InvalidRequestError naming the part of `spec` that is not a valid filter."""
    if not isinstance(spec, dict):
        raise InvalidRequestError(f"{param} must be an object with a 'type'", param)
    kind = spec.get("type")
    if kind in ("and", "or"):
        filters = spec.get("filters")
        if depth >= MAX_DEPTH or not isinstance(filters, list) or not filters:
            raise InvalidRequestError(
                f"{param}: a compound filter needs a non-empty list 'filters' (at most {MAX_DEPTH} deep)",
                param,
            )
        for i, inner in enumerate(filters):
            check_filter(inner, f"{param}.filters[{i}]", depth + 1)
        return
    if kind not in _COMPARE:
        known = ", ".join([*_COMPARE, "and", "or"])
        raise InvalidRequestError(f"{param}.type {kind!r} is not one of {known}", param)
    if not isinstance(spec.get("key"), str):
        raise InvalidRequestError(f"{param}.key must be an attribute name", param)
    value = spec.get("value")
    if kind in ("in", "nin") and not isinstance(value, list):
        raise InvalidRequestError(f"{param}.value must be a list for {kind!r}", param)
    if kind not in ("in", "nin") and not isinstance(value, str | int | float | bool):
        raise InvalidRequestError(f"{param}.value must be a string, number or boolean", param)


def matches(spec: dict[str, Any], attributes: Attributes) -> bool:
    """Whether a file with these attributes passes a filter `check_filter` accepted."""
    kind = spec["type"]
    if kind == "and":
        return all(matches(inner, attributes) for inner in spec["filters"])
    if kind == "or":
        return any(matches(inner, attributes) for inner in spec["filters"])
    if spec["key"] not in attributes:
        return kind in ("ne", "nin")
    try:
        return _COMPARE[kind](attributes[spec["key"]], spec["value"])
    except TypeError:  # a number compared with a string: not a match, as in OpenAI's stores
        return False
