"""POST /v1/calibrations and the calibration object."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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


class MethodFit(BaseModel):
    sign: float = Field(description="+1: higher scores mean machine-written; -1: lower scores do")
    threshold: float = Field(description="decide machine-written when sign * score > threshold")
    auroc: float
    tpr: float
    fpr: float
    n_human: int
    n_machine: int


class Calibration(BaseModel):
    calibration_id: str = Field(description="name it in a detect request's `calibration_id` to get decisions")
    model: str
    reference_model: str | None
    target_fpr: float
    created_at: float
    expires_at: int | None = Field(default=None, description="unix time the calibration is deleted at")
    methods: dict[str, MethodFit]


class CalibrationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Calibration] = Field(description="newest first")
    has_more: bool = False
