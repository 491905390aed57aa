"""POST /v1/calibrations: fit a detection threshold per method for a model (and reference model) at a target
false-positive rate from labelled texts; detect answers then carry calibrated decisions."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.analysis.calibration import fit_threshold
from app.api.analysis import AnalysisRequest, analyse
from app.auth import TenantDep
from app.calibrations import Calibration, MethodFit, calibration_id, calibration_key, load_calibration
from app.errors import ApiError
from app.services import ServicesDep

router = APIRouter(tags=["calibrations"])
CONCURRENCY = 4


class LabelledText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)
    label: Literal["human", "machine"]


class CalibrationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    reference_model: str | None = None
    texts: list[LabelledText] = Field(min_length=4, max_length=2000)
    methods: list[str] | None = None
    target_fpr: float = Field(default=0.05, gt=0.0, lt=1.0)


@router.post("/v1/calibrations", response_model=Calibration)
async def create_calibration(body: CalibrationRequest, services: ServicesDep, tenant: TenantDep) -> Calibration:
    labels = np.array([t.label == "machine" for t in body.texts])
    if labels.sum() < 2 or (~labels).sum() < 2:
        raise ApiError(422, "too_few_labels", "give at least two human and two machine texts", "texts")
    gate = asyncio.Semaphore(CONCURRENCY)

    async def scores(text: str) -> dict[str, float | None]:
        async with gate:
            request = AnalysisRequest(
                model=body.model, reference_model=body.reference_model, text=text, methods=body.methods
            )
            return (await analyse("detect", request, services, tenant))["sequence"]  # type: ignore[no-any-return]

    results = await asyncio.gather(*(scores(t.text) for t in body.texts))
    fits = {}
    for name in results[0]:
        values = np.array([r[name] if r[name] is not None else np.nan for r in results], dtype=np.float64)
        keep = np.isfinite(values)
        try:
            fit = fit_threshold(values[keep & ~labels], values[keep & labels], body.target_fpr)
        except ValueError:
            continue  # undefined on too many of these texts
        fits[name] = MethodFit(**fit.__dict__)
    calibration = Calibration(
        calibration_id=calibration_id(body.model, body.reference_model),
        model=body.model,
        reference_model=body.reference_model,
        target_fpr=body.target_fpr,
        created_at=time.time(),
        methods=fits,
    )
    await services.redis.set(calibration_key(tenant, calibration.calibration_id), calibration.model_dump_json())
    return calibration


@router.get("/v1/calibrations/{calibration_id}", response_model=Calibration)
async def get_calibration(calibration_id: str, services: ServicesDep, tenant: TenantDep) -> Calibration:
    found = await load_calibration(services, tenant, calibration_id)
    if found is None:
        raise ApiError(404, "calibration_not_found", f"calibration {calibration_id!r} not found", "calibration_id")
    return found
