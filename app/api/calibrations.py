"""POST /v1/calibrations: fit a detection threshold per method for a model (and reference model) at a target
false-positive rate from labelled texts; detect answers then carry calibrated decisions."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep, TenantDep
from app.platform.errors import ApiError
from app.schemas.calibrations import Calibration, CalibrationRequest
from app.serving.calibrations import fit_calibration, load_calibration

router = APIRouter(tags=["calibrations"])


@router.post("/v1/calibrations", response_model=Calibration)
async def create_calibration(body: CalibrationRequest, services: ServicesDep, tenant: TenantDep) -> Calibration:
    return await fit_calibration(services, tenant, body)


@router.get("/v1/calibrations/{calibration_id}", response_model=Calibration)
async def get_calibration(calibration_id: str, services: ServicesDep, tenant: TenantDep) -> Calibration:
    found = await load_calibration(services, tenant, calibration_id)
    if found is None:
        raise ApiError(404, "calibration_not_found", f"calibration {calibration_id!r} not found", "calibration_id")
    return found
