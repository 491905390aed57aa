"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from app.api.deps import ServicesDep
from app.platform import metrics
from app.platform.auth import metrics_access
from app.platform.errors import STORAGE_FULL_RETRY_S
from workers.redis_client import storage_full as is_storage_full

PROBE_KEY = "lp:ready-probe"  # one tiny write: a Redis that refuses it for want of memory refuses requests too

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_access)])
async def prometheus_metrics(services: ServicesDep) -> Response:
    """Prometheus text format, for the metrics key (LOGPROBE_METRICS_KEY) unless LOGPROBE_PUBLIC_METRICS opens it."""
    try:
        body = await metrics.render(services.catalog)
    except RedisError:
        body = generate_latest(metrics.REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when Redis answers and takes writes (not full: `storage_full`) and every configured model has a live
    worker."""
    try:
        await services.redis.ping()
        workers = {name: await services.catalog.live_workers(name) for name in services.catalog.configured}
    except RedisError as exc:
        return JSONResponse({"ready": False, "redis": False, "error": str(exc)}, status_code=503)
    try:
        await services.redis.set(PROBE_KEY, 1)  # no TTL: one tiny key, which eviction leaves alone
    except RedisError as exc:
        if not is_storage_full(exc):
            return JSONResponse({"ready": False, "redis": False, "error": str(exc)}, status_code=503)
        body = {"ready": False, "redis": True, "storage_full": True, "workers": workers, "error": str(exc)}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(STORAGE_FULL_RETRY_S)})
    ready = all(workers.values())
    body = {"ready": ready, "redis": True, "storage_full": False, "workers": workers}
    return JSONResponse(body, status_code=200 if ready else 503)
