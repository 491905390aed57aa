"""POST /v1/analysis/{uncertainty,detect,compare,membership}: methods over a record's distributions, on demand.
GET /v1/analysis/methods lists them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.analysis import REGISTRY
from app.api.answers import json_answer
from app.api.deps import ServicesDep, TenantDep, current_tenant
from app.schemas.analysis import (
    AnalysisRequest,
    AnalysisResponse,
    MethodInfo,
    ParamInfo,
)
from app.serving.analyses import analyse
from app.serving.calibrations import calibration_id, decisions, load_calibration

router = APIRouter(tags=["analysis"])


@router.post("/v1/analysis/uncertainty", response_model=AnalysisResponse)
async def uncertainty(body: AnalysisRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Token logprob, rank, entropy, margin and kurtosis; sequence mean probabilities, perplexity, entropy."""
    return json_answer(await analyse("uncertainty", body, services, tenant))


@router.post("/v1/analysis/detect", response_model=AnalysisResponse)
async def detect(body: AnalysisRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Machine-written text detection scores, with calibrated decisions where a calibration exists."""
    result = await analyse("detect", body, services, tenant)
    calibration = await load_calibration(services, tenant, calibration_id(result["model"], body.reference_model))
    if calibration is not None:
        result["decisions"] = decisions(calibration, result["sequence"])
    return json_answer(result)


@router.post("/v1/analysis/compare", response_model=AnalysisResponse)
async def compare(body: AnalysisRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Two models (`reference_model`) or one model with and without a `context`, on the same text: per-token
    KL, reverse KL, JS, URIAL shift, CK-PLUG confidence gain; drift per turn for a conversation."""
    return json_answer(await analyse("compare", body, services, tenant))


@router.post("/v1/analysis/membership", response_model=AnalysisResponse)
async def membership(body: AnalysisRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Pretraining-data detection scores: Min-K%, Min-K%++, DC-PDD."""
    return json_answer(await analyse("membership", body, services, tenant))


@router.get("/v1/analysis/methods", response_model=list[MethodInfo], dependencies=[Depends(current_tenant)])
async def list_methods() -> list[MethodInfo]:
    return [
        MethodInfo(
            name=m.name,
            families=list(m.families),
            level=m.level,
            description=m.description,
            higher_means=m.higher_means,
            needs=list(m.needs),
            requires=list(m.requires),
            params=[
                ParamInfo(name=p.name, default=p.default, min=p.low, max=p.high, description=p.description)
                for p in m.params
            ],
        )
        for m in REGISTRY.methods.values()
    ]
