"""Detection calibrations: fitted from labelled texts, stored per tenant, model and reference model, and the
decisions they give."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import numpy as np

from app.analysis.calibration import fit_threshold
from app.platform.errors import ApiError
from app.schemas.analysis import AnalysisRequest
from app.schemas.calibrations import Calibration, CalibrationRequest, MethodFit
from app.serving.analyses import analyse
from app.serving.services import Services
from workers.protocol import as_bytes

CONCURRENCY = 4  # texts scored and analysed at once while fitting


def calibration_id(model: str, reference_model: str | None) -> str:
    return hashlib.sha256(json.dumps([model, reference_model]).encode()).hexdigest()[:24]


def calibration_key(tenant: str, cid: str) -> str:
    return f"lp:calib:{tenant}:{cid}"


async def load_calibration(services: Services, tenant: str, cid: str) -> Calibration | None:
    raw = as_bytes(await services.redis.get(calibration_key(tenant, cid)))
    return None if raw is None else Calibration.model_validate_json(raw)


async def detect_decisions(
    services: Services,
    tenant: str,
    calibration_id: str | None,
    model: str,
    reference_model: str | None,
    sequence: dict[str, Any],
) -> dict[str, dict[str, Any]] | None:
    """The decisions of the calibration a detect request names (None when it names none)."""
    if calibration_id is None:
        return None
    calibration = await load_calibration(services, tenant, calibration_id)
    if calibration is None:
        raise ApiError(404, "calibration_not_found", f"calibration {calibration_id!r} not found", "calibration_id")
    if calibration.model != model or calibration.reference_model != reference_model:
        raise ApiError(
            422,
            "calibration_mismatch",
            f"calibration {calibration_id!r} was fitted for model {calibration.model!r} and reference model "
            f"{calibration.reference_model!r}, not {model!r} and {reference_model!r}",
            "calibration_id",
        )
    return decisions(calibration, sequence)


def decisions(calibration: Calibration, sequence: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per calibrated method: the score, the threshold and whether the text is judged machine-written."""
    out = {}
    for name, fit in calibration.methods.items():
        score = sequence.get(name)
        if score is not None:
            out[name] = {
                "machine": bool(fit.sign * score > fit.threshold),
                "sign": fit.sign,
                "threshold": fit.threshold,
                "target_fpr": calibration.target_fpr,
            }
    return out


async def fit_calibration(services: Services, tenant: str, body: CalibrationRequest) -> Calibration:
    """Score every labelled text, fit a threshold per detect method at the target FPR, and store the result."""
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
