"""POST /v1/analysis/{uncertainty,detect,compare,membership}: methods over a record's distributions, on demand.
GET /v1/analysis/methods lists them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.analysis import REGISTRY
from app.api.answers import json_answer
from app.api.deps import ServicesDep, TenantDep, current_tenant
from app.serving.analyses import analyse
from app.serving.calibrations import detect_decisions
from logprobe.schemas.analysis import (
    AnalysisRequest,
    AnalysisResponse,
    MethodInfo,
    ParamInfo,
)

router = APIRouter(tags=["analysis"])


def number(value: float, kind: str) -> int | float:
    return int(value) if kind == "int" else float(value)


@router.post("/v1/analysis/uncertainty", response_model=AnalysisResponse)
async def uncertainty(body: AnalysisRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Token logprob, rank, entropy, margin and kurtosis; sequence mean probabilities, perplexity, entropy."""
    return json_answer(await analyse("uncertainty", body, services, tenant))


@router.post("/v1/analysis/detect", response_model=AnalysisResponse)
async def detect(body: AnalysisRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Machine-written text detection scores, with the decisions of the calibration the request names."""
    result = await analyse("detect", body, services, tenant)
    calibrated = await detect_decisions(
        services, tenant, body.calibration_id, result["model"], body.reference_model, result["sequence"]
    )
    if calibrated is not None:  # beside the decisions of the heads the request names
        result["decisions"] = {**(result["decisions"] or {}), **calibrated}
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
    """Every method with its paper, parameters (integers where the parameter is one) and direction."""
    return [
        MethodInfo(
            name=m.name,
            families=list(m.families),
            level=m.level,
            description=m.description,
            paper=m.paper,
            higher_means=m.higher_means,
            needs=list(m.needs),
            requires=list(m.requires),
            params=[
                ParamInfo(
                    name=p.name,
                    type=p.kind,
                    default=number(p.default, p.kind),
                    min=number(p.low, p.kind),
                    max=number(p.high, p.kind),
                    description=p.description,
                )
                for p in m.params
            ],
        )
        for m in REGISTRY.methods.values()
    ]
