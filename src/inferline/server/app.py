"""The HTTP app: routes are thin; serving modules do the work; errors map in one place."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferline.config import ServerConfig
from inferline.errors import InferlineError
from inferline.router.deployments import DeploymentPool
from inferline.router.limits import Limiter
from inferline.router.router import Router
from inferline.server.admin import admin_router
from inferline.server.auth import Authenticator, Tenant
from inferline.server.errors import error_response, starlette_error_response, validation_error_response
from inferline.server.metrics import Metrics
from inferline.server.oip import oip_router
from inferline.server.openai_routes import openai_router
from inferline.server.openai_serving import OpenAIServing

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _BodyTooLargeError(Exception):
    pass


class RequestContext:
    """Pure ASGI (no per-request task): request ids, the body-size limit, and request metrics."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        started = time.perf_counter()
        scope.setdefault("state", {}).update(request_id=request_id, started=started)
        status = 500
        response_started = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLargeError
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
            if declared > self.max_body_bytes:
                raise _BodyTooLargeError
            await self.app(scope, limited_receive, tagged_send)
        except _BodyTooLargeError:
            if not response_started:
                message = f"request body is over the limit of {self.max_body_bytes} bytes (max_body_bytes)"
                is_oip = scope["path"].startswith("/v2")
                body = (
                    {"error": message}
                    if is_oip
                    else {
                        "error": {
                            "message": message,
                            "type": "invalid_request_error",
                            "param": None,
                            "code": 413,
                        }
                    }
                )
                await JSONResponse(body, status_code=413)(scope, receive, tagged_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def create_app(config: ServerConfig, pool: DeploymentPool | None = None) -> FastAPI:
    config.check_references()
    pool = pool if pool is not None else DeploymentPool(config.deployments)
    metrics = Metrics()
    auth = Authenticator(config)
    router = Router(config, pool, Limiter.from_config(config))
    router.listeners.append(metrics.record_usage)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background: the port answers /health at once and /ready when the models are warm.
        loading = asyncio.create_task(pool.load_all())
        yield
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await pool.unload_all()
        await router.limiter.close()

    app = FastAPI(title="inferline", version="0.1.0", lifespan=lifespan)
    app.state.router = router
    app.state.metrics = metrics
    app.add_exception_handler(InferlineError, error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, starlette_error_response)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, error_response)
    app.add_middleware(RequestContext, max_body_bytes=config.max_body_bytes, metrics=metrics)

    async def tenant(request: Request) -> Tenant:  # async: FastAPI runs sync dependencies on a thread pool
        return auth.tenant(request.headers.get("authorization"))

    async def admin(request: Request) -> None:
        auth.admin(request.headers.get("authorization"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        states = {d.config.name: "ready" if d.ready else (d.error or "loading") for d in pool.deployments}
        return JSONResponse(
            {"ready": pool.all_ready, "models": states}, status_code=200 if pool.all_ready else 503
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        for deployment in pool.deployments:
            metrics.observe_backend(deployment.config.name, deployment.backend)
            metrics.circuit_open.labels(deployment.name).set(deployment.breaker.state != "closed")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(openai_router(OpenAIServing(router, metrics), router, tenant))
    app.include_router(oip_router(router, tenant))
    app.include_router(admin_router(router, admin))
    return app
