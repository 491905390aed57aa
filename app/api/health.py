"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from app.api.deps import ServicesDep
from app.platform import metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(services: ServicesDep) -> Response:
    """Prometheus text format; no API key needed (scrapers sit on the deployment's network)."""
    try:
        body = await metrics.render(services.catalog)
    except RedisError:
        body = generate_latest(metrics.REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when Redis answers and every configured model has a live worker."""
    try:
        await services.redis.ping()
        workers = {name: await services.catalog.live_workers(name) for name in services.catalog.configured}
    except RedisError as exc:
        return JSONResponse({"ready": False, "redis": False, "error": str(exc)}, status_code=503)
    ready = all(workers.values())
    return JSONResponse({"ready": ready, "redis": True, "workers": workers}, status_code=200 if ready else 503)
