"""Stored detection calibrations (per tenant, model and reference model) and the decisions they give."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field

from app.services import Services
from workers.protocol import as_bytes


class MethodFit(BaseModel):
    sign: float = Field(description="+1: higher scores mean machine-written; -1: lower scores do")
    threshold: float = Field(description="decide machine-written when sign * score > threshold")
    auroc: float
    tpr: float
    fpr: float
    n_human: int
    n_machine: int


class Calibration(BaseModel):
    calibration_id: str
    model: str
    reference_model: str | None
    target_fpr: float
    created_at: float
    methods: dict[str, MethodFit]


def calibration_id(model: str, reference_model: str | None) -> str:
    return hashlib.sha256(json.dumps([model, reference_model]).encode()).hexdigest()[:24]


def calibration_key(tenant: str, cid: str) -> str:
    return f"lp:calib:{tenant}:{cid}"


async def load_calibration(services: Services, tenant: str, cid: str) -> Calibration | None:
    raw = as_bytes(await services.redis.get(calibration_key(tenant, cid)))
    return None if raw is None else Calibration.model_validate_json(raw)


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
