"""The FastAPI gateway: HTTP, validation, auth, jobs and records. It never loads a model."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from app import logs, metrics
from app.api import (
    analysis,
    batches,
    calibrations,
    decode,
    generate,
    health,
    models,
    openai_compat,
    records,
    score,
    web,
)
from app.batches import BatchRunner
from app.errors import ERROR_RESPONSES, install_error_handlers
from app.limits import BodyLimit, InflightLimit
from app.services import Services
from app.settings import Settings, get_settings

log = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.configure(settings.json_logs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings)
        app.state.services = services
        app.state.keys = services.keys
        runner = BatchRunner(services, settings.batch_concurrency, settings.record_ttl_s)
        await services.jobs.start()
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()
            await services.jobs.stop()
            await services.redis.aclose()

    app = FastAPI(
        title="logprobe",
        version="0.1.0",
        lifespan=lifespan,
        description="Full next-token distributions of language models, kept compactly and analysed.",
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(InflightLimit, limit=settings.max_inflight)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Request id (echoed in X-Request-Id and in every log line), latency metric, one access log line."""
        rid = (request.headers.get("x-request-id") or uuid.uuid4().hex)[:128]
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        try:
            response = await call_next(request)
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels(request.method, template, str(response.status_code)).observe(
                time.perf_counter() - started
            )
            logs.log_request(request.method, request.url.path, response.status_code, started)
            response.headers["X-Request-Id"] = rid
            return response
        finally:
            logs.request_id.reset(token)

    for module in (
        health,
        models,
        score,
        generate,
        records,
        analysis,
        calibrations,
        decode,
        openai_compat,
        batches,
        web,
    ):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    return app
