"""Calibrations: POST /v1/calibrations fits a detection threshold per method for a model (and reference model) at
a target false-positive rate from labelled texts; GET lists them (newest first), GET/DELETE /v1/calibrations/{id}.
A detect request that names a calibration's id gets its decisions."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import CreatorDep, ListLimit, ServicesDep, TenantDep
from app.serving.calibrations import delete_calibration, fit_calibration, get_calibration, list_calibrations
from logprobe.schemas.calibrations import Calibration, CalibrationList, CalibrationRequest

router = APIRouter(tags=["calibrations"])


@router.post("/v1/calibrations", response_model=Calibration)
async def create_calibration(
    body: CalibrationRequest, services: ServicesDep, tenant: TenantDep, creator: CreatorDep
) -> Calibration:
    return await fit_calibration(services, tenant, body, creator)


@router.get("/v1/calibrations", response_model=CalibrationList)
async def list_all(services: ServicesDep, tenant: TenantDep, limit: ListLimit = 100) -> CalibrationList:
    found = await list_calibrations(services, tenant)
    return CalibrationList(data=found[:limit], has_more=len(found) > limit)


@router.get("/v1/calibrations/{calibration_id}", response_model=Calibration)
async def get_one(calibration_id: str, services: ServicesDep, tenant: TenantDep) -> Calibration:
    return await get_calibration(services, tenant, calibration_id)


@router.delete("/v1/calibrations/{calibration_id}", status_code=204)
async def delete(calibration_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    await delete_calibration(services, tenant, calibration_id)
    return Response(status_code=204)
