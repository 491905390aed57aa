"""Heads: POST /v1/heads trains a learned analysis (PAWN, LOS, probe) on labelled texts or records in a worker and
answers 202 with its id; GET /v1/heads lists the tenant's heads, GET/DELETE /v1/heads/{id}. Analyses, batches and
the page name heads in `heads`."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import CreatorDep, ListLimit, ServicesDep, TenantDep
from app.serving.heads import create_head, delete_head, get_head, list_heads
from logprobe.schemas.heads import Head, HeadList, HeadRequest

router = APIRouter(tags=["heads"])


@router.post("/v1/heads", response_model=Head, status_code=202)
async def create(body: HeadRequest, services: ServicesDep, tenant: TenantDep, creator: CreatorDep) -> Head:
    """Check the examples, then score the texts without a record and train the head in a worker: follow it with
    GET /v1/heads/{id} (status, progress, cross-validated metrics)."""
    return await create_head(services, tenant, body, creator)


@router.get("/v1/heads", response_model=HeadList)
async def list_all(services: ServicesDep, tenant: TenantDep, limit: ListLimit = 100) -> HeadList:
    found = await list_heads(services, tenant)
    return HeadList(data=found[:limit], has_more=len(found) > limit)


@router.get("/v1/heads/{head_id}", response_model=Head)
async def get_one(head_id: str, services: ServicesDep, tenant: TenantDep) -> Head:
    return await get_head(services, tenant, head_id)


@router.delete("/v1/heads/{head_id}", status_code=204)
async def delete(head_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    await delete_head(services, tenant, head_id)
    return Response(status_code=204)
