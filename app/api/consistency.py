"""POST /v1/analysis/consistency: n sampled answers to one prompt, their similarities, and the consistency methods
(semantic entropy, semantic sets, graph spectra, lexical similarity, CoCoA, P(True)) over them."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.answers import json_answer
from app.api.deps import ServicesDep, TenantDep
from app.serving.consistency import consistency
from logprobe.schemas.consistency import ConsistencyRequest, ConsistencyResponse

router = APIRouter(tags=["analysis"])


@router.post("/v1/analysis/consistency", response_model=ConsistencyResponse)
async def consistency_analysis(body: ConsistencyRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Sample `n` answers as one batch (their records kept), judge `answer` (default: the greedy answer) against
    them under `similarity`, and report each method's sequence value (higher: more uncertain)."""
    return json_answer(await consistency(body, services, tenant))
