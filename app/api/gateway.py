"""The FastAPI gateway app: routers, middleware, error handlers and the services' lifetime. It never loads a model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request

from app.api import (
    analysis,
    attribution,
    batches,
    byte_level,
    calibrations,
    consistency,
    decode,
    docs,
    frequency_tables,
    generate,
    heads,
    health,
    lens,
    models,
    openai_compat,
    records,
    score,
    tokenizer,
    web,
)
from app.batches.runner import BatchRunner
from app.platform import logs
from app.platform.auth import KeyRing
from app.platform.bodies import JsonBodyCheck
from app.platform.body_deadline import BodyDeadline
from app.platform.errors import ERROR_RESPONSES, install_error_handlers
from app.platform.expiry import ExpirySweeper
from app.platform.head import HeadAsGet
from app.platform.key_gate import KeyGate, public_routes
from app.platform.leases import LeasedWork
from app.platform.limits import BodyLimit, InflightLimit
from app.platform.observe import Observe
from app.platform.settings import Settings, get_settings
from app.platform.shutdown import within
from app.serving.heads import PREPARING, resume_preparation
from app.serving.jobs import client_gone
from app.serving.services import Services

log = logging.getLogger("app")
ROUTERS = [
    module.router
    for module in (
        health,
        models,
        score,
        byte_level,
        generate,
        records,
        analysis,
        attribution,
        lens,
        consistency,
        calibrations,
        heads,
        frequency_tables,
        decode,
        openai_compat,
        tokenizer,
        batches,
        web,
        docs,
    )
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_access()  # no API keys and no explicit anonymous access: refuse to start
    logs.configure(settings.json_logs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings)
        app.state.services = services
        app.state.keys = services.keys
        runner = BatchRunner(services, settings.batch_concurrency, settings.record_ttl_s)
        services.preparations = LeasedWork(
            services.redis, PREPARING, "head-prep", lambda name: resume_preparation(services, name)
        )
        sweeper = ExpirySweeper(services.redis, settings.expiry_sweep_s)
        await services.jobs.start()
        await runner.start()
        await services.preparations.start()
        await sweeper.start()
        try:
            yield
        finally:  # each step bounded: one that hangs must not keep the process (and its workers) alive
            await within(sweeper.stop(), "the expiry sweeper")
            await within(services.preparations.stop(), "the head preparations")
            await within(runner.stop(), "the batch runner")
            await within(services.jobs.stop(), "the reply listener")
            await within(services.redis.aclose(), "the Redis connections")

    async def watch_client(request: Request) -> None:
        """Let jobs waited on in this request see whether its client is still there."""
        client_gone.set(request.is_disconnected)

    app = FastAPI(
        title="logprobe",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(watch_client)],
        description="Full next-token distributions of language models, kept compactly and analysed.",
        openapi_url=None,  # served by app/api/docs.py, behind a key unless LOGPROBE_PUBLIC_DOCS opens them
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(JsonBodyCheck)  # unencodable text, non-finite numbers: 422 before any route
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(
        InflightLimit,
        limit=settings.max_inflight,
        busy_limit=settings.max_busy,
        caller_limit=settings.max_inflight_per_key,
    )
    app.add_middleware(BodyDeadline, timeout_s=settings.body_read_timeout_s)  # a body that never ends: 408
    routes = [*app.router.routes, *(route for router in ROUTERS for route in router.routes)]
    app.add_middleware(KeyGate, keys=KeyRing(settings.api_keys), public=public_routes(routes))  # no key: 401 here
    app.add_middleware(HeadAsGet)  # HEAD wherever GET is (outside the key gate: HEAD /healthz is as public as GET)

    app.add_middleware(Observe)  # outermost: sees every answer, the limits' too

    for router in ROUTERS:
        app.include_router(router, responses=ERROR_RESPONSES)
    return app
