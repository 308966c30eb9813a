"""One place that turns exceptions into HTTP status codes and error bodies.

OpenAI routes answer `{"error": {"message", "type", "param", "code"}}`; Open Inference Protocol routes
answer `{"error": "..."}`. Nothing a client sends produces a 500: only our own bugs do, and those are
logged with the request id.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferline.backends.base import UnsupportedOperationError
from inferline.errors import (
    BackendUnavailableError,
    EngineStoppedError,
    InferlineError,
    InvalidRequestError,
    LimitExceededError,
    ModelNotFoundError,
    ModelNotReadyError,
    NotFoundError,
    PromptTooLongError,
    QueueFullError,
)

logger = logging.getLogger(__name__)


class HTTPError(InferlineError):
    """An error whose status code the server decides (401, 404, 413, 503, ...)."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.param = status, message, error_type, param
        self.headers = headers or {}


def _retry_after(seconds: float | None, default: float = 1.0) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds if seconds is not None else default)))}


# (error class, status, OpenAI error type, param); the first class that matches wins.
_STATUS: list[tuple[type[Exception], int, str, str | None]] = [
    (PromptTooLongError, 413, "invalid_request_error", None),
    (InvalidRequestError, 400, "invalid_request_error", None),
    (UnsupportedOperationError, 400, "invalid_request_error", "model"),
    (ModelNotFoundError, 404, "not_found_error", "model"),
    (NotFoundError, 404, "not_found_error", None),
    (QueueFullError, 429, "rate_limit_error", None),
    (ModelNotReadyError, 503, "service_unavailable", "model"),
    (BackendUnavailableError, 502, "upstream_error", None),
    (EngineStoppedError, 503, "service_unavailable", None),
]


def to_http_error(error: Exception) -> HTTPError:
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, LimitExceededError):
        kind = "insufficient_quota" if error.limit == "budget" else "rate_limit_error"
        return HTTPError(429, str(error), kind, None, _retry_after(error.retry_after_s))
    for kind_of_error, status, error_type, param in _STATUS:
        if isinstance(error, kind_of_error):
            if isinstance(error, InvalidRequestError):
                param = error.param
            retry_after = getattr(error, "retry_after_s", 5.0 if status == 503 else None)
            headers = _retry_after(retry_after) if status in (429, 502, 503) else None
            return HTTPError(status, str(error), error_type, param, headers)
    return HTTPError(500, "internal error; the server logged it with this request's id", "internal_error")


def validation_param(error: RequestValidationError) -> tuple[str, str | None]:
    """A readable message and the offending field from pydantic's error list."""
    first: dict[str, Any] = error.errors()[0] if error.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    # Union types add their member names to the location; keep the field path only.
    path = [p for p in location if not p[0].isupper() and p not in {"str", "int", "list[str]", "list[int]"}]
    param = ".".join(path) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}", None
    if kind == "extra_forbidden":
        return f"field {param!r} is not supported by this server; remove it", param
    if kind == "missing":
        if param is None:
            return "request body is missing: send a JSON object", None
        return f"field {param!r} is required", param
    return f"{param or 'body'}: {first.get('msg', 'invalid value')}", param


def openai_error_body(error: HTTPError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.status,
        }
    }


def error_response(request: Request, error: Exception) -> JSONResponse:
    http_error = to_http_error(error)
    if http_error.status >= 500:
        logger.error("request %s failed", request.headers.get("x-request-id"), exc_info=error)
    is_oip = request.url.path.startswith("/v2")
    body = {"error": http_error.message} if is_oip else openai_error_body(http_error)
    return JSONResponse(body, status_code=http_error.status, headers=http_error.headers)


def starlette_error_response(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Routing and body-parsing errors raised by the framework, in our error shape."""
    detail = str(error.detail)
    if error.status_code == 400 and "parsing the body" in detail:
        detail = "request body could not be parsed: it must be UTF-8 JSON"
    kinds = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}
    http_error = HTTPError(error.status_code, detail, kinds.get(error.status_code, "invalid_request_error"))
    return error_response(request, http_error)


def validation_error_response(request: Request, error: RequestValidationError) -> JSONResponse:
    message, param = validation_param(error)
    return error_response(request, HTTPError(400, message, "invalid_request_error", param))
