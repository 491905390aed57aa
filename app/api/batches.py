"""POST /v1/batches: many texts and the analyses to run on each (or consistency over each); GET /v1/batches lists
the tenant's (newest first); GET /v1/batches/{id} for progress, GET /v1/batches/{id}/results for the JSONL lines (one
per input, in input order), POST .../cancel, DELETE /v1/batches/{id} (stops it and removes it with its results)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from app.api.deps import ListLimit, ServicesDep, TenantDep
from app.batches.store import batch_status, cancel_batch, delete_batch, list_batches, result_lines
from app.batches.submit import submit_batch
from app.platform.errors import ApiError
from logprobe.schemas.batches import Batch, BatchList, BatchRequest

router = APIRouter(tags=["batches"])
BatchId = Annotated[str, Path(pattern=r"^batch_[0-9a-f]{24}$")]


@router.post("/v1/batches", response_model=Batch)
async def create(body: BatchRequest, services: ServicesDep, tenant: TenantDep) -> Batch:
    batch_id = await submit_batch(services, tenant, body)
    return Batch.model_validate(await batch_status(services.redis, tenant, batch_id))


@router.get("/v1/batches", response_model=BatchList)
async def list_all(
    services: ServicesDep,
    tenant: TenantDep,
    limit: ListLimit = 20,
    after: Annotated[str | None, Query(max_length=64, description="the last id of the previous page")] = None,
) -> BatchList:
    listed = await list_batches(services.redis, tenant, limit, after)
    if listed is None:
        raise ApiError(404, "batch_not_found", f"no batch {after!r} to list after", "after")
    found, more = listed
    return BatchList(data=[Batch.model_validate(b) for b in found], has_more=more)


@router.get("/v1/batches/{batch_id}", response_model=Batch)
async def get(batch_id: BatchId, services: ServicesDep, tenant: TenantDep) -> Batch:
    return Batch.model_validate(await batch_status(services.redis, tenant, batch_id))


@router.post("/v1/batches/{batch_id}/cancel", response_model=Batch)
async def cancel(batch_id: BatchId, services: ServicesDep, tenant: TenantDep) -> Batch:
    await cancel_batch(services.redis, tenant, batch_id, services.settings.record_ttl_s)
    return Batch.model_validate(await batch_status(services.redis, tenant, batch_id))


@router.delete("/v1/batches/{batch_id}", status_code=204)
async def delete(batch_id: BatchId, services: ServicesDep, tenant: TenantDep) -> Response:
    await delete_batch(services.redis, tenant, batch_id)
    return Response(status_code=204)


@router.get(
    "/v1/batches/{batch_id}/results",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one JSON line per input"}},
)
async def results(batch_id: BatchId, services: ServicesDep, tenant: TenantDep) -> StreamingResponse:
    status = await batch_status(services.redis, tenant, batch_id)
    if status["status"] not in ("completed", "cancelled"):
        raise ApiError(
            409, "batch_not_finished", f"batch {batch_id!r} is {status['status']}", "batch_id", {"Retry-After": "2"}
        )
    return StreamingResponse(
        result_lines(services.redis, tenant, batch_id, status["total"]),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}.jsonl"'},
    )
