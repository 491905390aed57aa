"""POST /v1/analysis/attribution: per target token, the importance of each token before it (ReAGent, or
leave-one-out occlusion as a baseline), computed by a worker from forward passes of perturbed contexts."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.answers import json_answer
from app.api.deps import ServicesDep, TenantDep
from app.serving.attribution import attribute
from logprobe.schemas.attribution import AttributionRequest, AttributionResponse

router = APIRouter(tags=["analysis"])


@router.post("/v1/analysis/attribution", response_model=AttributionResponse)
async def attribution(body: AttributionRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """ReAGent (Zhao & Shan 2024) or occlusion; seeded, and bounded by `max_passes` forward passes."""
    return json_answer(await attribute(body, services, tenant))
