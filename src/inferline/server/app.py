"""The HTTP app: routes are thin; serving modules do the work; errors map in one place."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferline.backends.base import Backend
from inferline.batch.files import FileStore
from inferline.batch.jobs import BatchStore
from inferline.batch.service import BatchService
from inferline.config import DeploymentConfig, ServerConfig
from inferline.db import database_url, open_engine
from inferline.errors import InferlineError
from inferline.models.store import inferline_home
from inferline.quality.loop import QualityLoop
from inferline.registry.serving import RegistrySources
from inferline.retrieval.stores import open_stores
from inferline.router.caching import RouteCaches
from inferline.router.deployments import DeploymentPool, build_backend
from inferline.router.limits import Limiter
from inferline.router.rag import RagRetriever
from inferline.router.router import Router
from inferline.server.admin import admin_router
from inferline.server.auth import Authenticator, Tenant
from inferline.server.batch_routes import batch_router
from inferline.server.batch_serving import ServingExecutor
from inferline.server.dashboard import Dashboard
from inferline.server.deployments_admin import deployments_admin_router
from inferline.server.errors import error_response, starlette_error_response, validation_error_response
from inferline.server.files_routes import files_router
from inferline.server.metrics import PoolCollector
from inferline.server.oip import oip_router
from inferline.server.openai_routes import openai_router
from inferline.server.openai_serving import OpenAIServing
from inferline.server.quality_routes import quality_router
from inferline.server.response_store import ResponseStore, ResponseStoreError
from inferline.server.responses_routes import responses_router
from inferline.server.responses_serving import ResponsesServing
from inferline.server.rollout_admin import rollout_admin_router, rollout_controller
from inferline.server.slo import slo_router
from inferline.server.usage import Metering, usage_router
from inferline.server.vector_store_routes import vector_store_router
from inferline.streams.service import StreamWorkers
from inferline.telemetry.logs import AccessLog, RequestLog, record_usage, set_tenant
from inferline.telemetry.metrics import Metrics
from inferline.telemetry.slo import SloCollector, SloTracker
from inferline.telemetry.tracing import HttpSpan, Tracing

logger = logging.getLogger(__name__)

UPLOAD_PATH = "/v1/files"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


_PROCESS_ID = secrets.token_hex(6)
"""Request ids are this process's random prefix and a counter: unique across replicas, and cheaper
per request than a uuid4 (which reads the OS's random source)."""
_NEXT_ID = itertools.count(1)


class _BodyTooLargeError(Exception):
    pass


class RequestContext:
    """Pure ASGI (no per-request task): request ids, the body-size limit, request metrics, and the
    request's server span and log context (its access line once the response has gone)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        metrics: Metrics | None,
        tracing: Tracing,
        access_log: AccessLog,
        max_upload_bytes: int,
        quality: QualityLoop,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        """File uploads (POST /v1/files) check their own, larger limit as they stream to disk."""
        self.metrics = metrics
        self.tracing = tracing
        self.access_log = access_log
        self.quality = quality

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else f"{_PROCESS_ID}{next(_NEXT_ID):020x}"
        started = time.perf_counter()
        scope.setdefault("state", {}).update(request_id=request_id, started=started)
        log, receive, send = self.access_log.begin(request_id, receive, send)
        log.prompt_template = headers.get(b"x-inferline-prompt-template", b"").decode("latin-1")[:256] or None
        span = self.tracing.start_http(scope["method"], scope["path"], request_id, headers)
        status = 500
        response_started = False
        received = 0
        is_upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        max_bytes, setting = (
            (self.max_upload_bytes, "batch.max_file_bytes")
            if is_upload
            else (self.max_body_bytes, "max_body_bytes")
        )

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
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
            if declared > max_bytes:
                raise _BodyTooLargeError
            await self.app(scope, limited_receive, tagged_send)
        except _BodyTooLargeError:
            if not response_started:
                message = f"request body is over the limit of {max_bytes} bytes ({setting})"
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
            self._end(scope, status, started, log, span)

    def _end(self, scope: Scope, status: int, started: float, log: RequestLog, span: HttpSpan | None) -> None:
        """The access line first, while the request's trace is still current, so it carries its ids."""
        if self.metrics is not None:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_http(route, status, time.perf_counter() - started)
        self.quality.observe(log)
        self.access_log.end(log, scope["method"], scope["path"], status, time.perf_counter() - started)
        if span is not None:
            span.end(status, getattr(scope.get("route"), "path", None))


def create_app(
    config: ServerConfig,
    pool: DeploymentPool | None = None,
    stop: Callable[[], None] | None = None,
    build: Callable[[DeploymentConfig], Backend] = build_backend,
) -> FastAPI:
    """The app serving `config`. `stop` asks the HTTP server running it to shut down; with
    `on_load_failure: exit` it is called as soon as a deployment fails to load. `build` makes each
    deployment's backend (the local engine or runner by default; handles to Ray replicas with --ray)."""
    sources = RegistrySources(config.registry, config.telemetry.database_url)
    pool = (
        pool if pool is not None else DeploymentPool(config.deployments, prepare=sources.prepare, build=build)
    )
    metrics = Metrics()
    metrics.registry.register(PoolCollector(pool))
    slo = SloTracker(config.routes)
    metrics.registry.register(SloCollector(slo))
    auth = Authenticator(config)
    router = Router(config, pool, Limiter.from_config(config))
    if config.telemetry.metrics:
        router.listeners.append(metrics.record_usage)
    if slo.routes:
        router.listeners.append(slo.record)
    dashboard = Dashboard(pool, auth)
    router.listeners.append(dashboard.series.record)
    metering = Metering(config.telemetry, metrics.registry)
    router.listeners.extend(metering.listeners)
    router.listeners.append(record_usage)  # the request's route, deployment and tokens for its log lines
    tracing = Tracing(config.telemetry.tracing)
    rollouts = rollout_controller(config, router, sources.database_url)
    stored_responses = ResponseStore(
        database_url(config.telemetry.database_url, inferline_home()), config.responses
    )
    embedding = config.vector_stores.embedding_deployment
    caches = RouteCaches(router, config.redis_url, embedding)
    batch_database = open_engine(
        database_url(config.telemetry.database_url, inferline_home()), "telemetry.database_url"
    )
    files = FileStore(batch_database, config.batch.data_dir or inferline_home() / "files")
    vector_stores = open_stores(
        config.vector_stores, batch_database, config.batch.data_dir or inferline_home()
    )
    rag = RagRetriever(router, vector_stores, embedding, metrics.observe_retrieval)
    serving = OpenAIServing(router, caches, rag)
    quality = QualityLoop(
        config.quality,
        database_url(config.telemetry.database_url, inferline_home()),
        metrics.registry,
        router,
    )
    observe = quality.observe if quality.reads_bodies else None  # batch lines and stream calls, as requests
    executor = ServingExecutor(serving, allow_failed=config.on_load_failure == "serve_rest", observe=observe)
    batches = BatchService(config.batch, files, BatchStore(batch_database), executor, router.limiter)
    streams = StreamWorkers(config, router, metrics.registry, inferline_home(), observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background: the port answers /health at once and /ready when the models are warm.
        loading = asyncio.create_task(
            pool.load_all(on_failure=stop if config.on_load_failure == "exit" else None)
        )
        sampling = asyncio.create_task(dashboard.sample_forever())
        metering.start()
        quality.capture.start()
        rollouts.start()  # before the first request: each planned canary resumes at its stored step
        rolling = asyncio.create_task(rollouts.run_forever())
        try:  # the retention limits may have been lowered since the last run
            await asyncio.to_thread(stored_responses.prune)
        except ResponseStoreError as error:  # served once the database is back; pruned on its next write
            logger.warning("stored responses not pruned at startup: %s", error)
        await batches.start()  # each unfinished batch carries on once its models have loaded
        streams.start()  # each worker reads once the models have loaded
        yield
        await streams.close()  # messages in flight are delivered again; their results are written once
        await batches.close()  # unfinished batches resume where their output files end on the next start
        loading.cancel()
        sampling.cancel()
        rolling.cancel()
        await asyncio.gather(loading, sampling, rolling, return_exceptions=True)
        rollouts.close()
        await pool.unload_all()
        await router.limiter.close()
        await caches.close()
        await metering.close()  # after the drain and the unloads, so their records are written too
        stored_responses.close()
        await asyncio.to_thread(quality.capture.close)  # the captures still queued are written
        vector_stores.backend.close()
        await asyncio.to_thread(tracing.shutdown)  # exports the buffered spans; may wait on the collector
        batch_database.dispose()

    app = FastAPI(title="inferline", version="0.1.0", lifespan=lifespan)
    app.state.router = router
    app.state.metrics = metrics
    app.state.slo = slo
    app.state.tracing = tracing
    app.state.quality = quality
    app.add_exception_handler(InferlineError, error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, starlette_error_response)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, error_response)
    app.add_middleware(
        RequestContext,
        max_body_bytes=config.max_body_bytes,
        metrics=metrics if config.telemetry.metrics else None,
        tracing=tracing,
        access_log=AccessLog(config.telemetry, copy_bodies=quality.reads_bodies),
        quality=quality,
        # the multipart framing around the file is a few hundred bytes; the file part itself is checked
        max_upload_bytes=config.batch.max_file_bytes + 65536,
    )

    async def tenant(request: Request) -> Tenant:  # async: FastAPI runs sync dependencies on a thread pool
        who = auth.tenant(request.headers.get("authorization"))
        set_tenant(who.principal.tenant)
        return who

    async def admin(request: Request) -> None:
        auth.admin(request.headers.get("authorization"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        states = {d.config.name: "ready" if d.ready else (d.error or "loading") for d in pool.deployments}
        ready = pool.is_ready(allow_failed=config.on_load_failure == "serve_rest")
        return JSONResponse(
            {"ready": ready, "models": states, "failed": pool.failed}, status_code=200 if ready else 503
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(openai_router(serving, router, tenant))
    app.include_router(responses_router(ResponsesServing(serving, stored_responses), tenant))
    app.include_router(files_router(files, config.batch.max_file_bytes, tenant))
    app.include_router(batch_router(batches, tenant))
    app.include_router(vector_store_router(vector_stores, files, router, embedding, tenant))
    app.include_router(oip_router(router, tenant))
    app.include_router(admin_router(router, admin, streams))
    app.include_router(deployments_admin_router(config, pool, sources, admin))
    app.include_router(rollout_admin_router(rollouts, admin))
    app.include_router(slo_router(slo, admin))
    app.include_router(usage_router(metering.store, auth))
    app.include_router(quality_router(quality, router, tenant, admin))
    app.include_router(dashboard.routes())
    return app
