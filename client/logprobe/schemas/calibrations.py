"""POST /v1/calibrations and the calibration object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from logprobe.schemas.tokens import ChatMessage, Text

MAX_EXAMPLES = 2000


class LabelledText(BaseModel):
    """The older shape of a calibration's example: a text labelled `human` or `machine`."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)
    label: Literal["human", "machine"]


class LabelledExample(BaseModel):
    """A labelled example, as heads take them: one of `text`, `messages`, `record_id`, and `label` 0 or 1 (1 is what
    the detect score points to: machine-written)."""

    model_config = ConfigDict(extra="forbid")
    text: Text | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    record_id: str | None = None
    label: Literal[0, 1] = Field(description="1: machine-written, 0: human-written (an integer: not true or 1.0)")

    @field_validator("label", mode="before")
    @classmethod
    def _an_integer(cls, value: Any) -> Any:
        if type(value) is not int or value not in (0, 1):  # strict as integers elsewhere: true and 1.0 are not labels
            raise PydanticCustomError("invalid_label", "labels are the integers 0 or 1")
        return value


class CalibrationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    reference_model: str | None = None
    examples: list[LabelledExample] | None = Field(
        default=None,
        min_length=4,
        max_length=MAX_EXAMPLES,
        description="labelled examples, the shape heads take: [{text | messages | record_id, label: 0 | 1}], "
        "1 machine-written; at least two of each label",
    )
    texts: list[LabelledText] | None = Field(
        default=None,
        min_length=4,
        max_length=MAX_EXAMPLES,
        description="the older shape, still taken: [{text, label: human | machine}] (give this or `examples`)",
    )
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
    created_by: str | None = Field(
        default=None, description='who made it: "key " and 8 hex digits of its key\'s sha256, or "anonymous"'
    )
    n_texts: int | None = Field(default=None, description="the labelled texts it was fitted on")
    expires_at: int | None = Field(default=None, description="unix time the calibration is deleted at")
    methods: dict[str, MethodFit]


class CalibrationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Calibration] = Field(description="newest first")
    has_more: bool = False
