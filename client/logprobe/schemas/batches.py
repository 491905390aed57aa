"""POST /v1/batches and the batch object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from logprobe.schemas.analysis import DEFAULT_TABLE, Family, SpanName, SpanRange
from logprobe.schemas.consistency import ANSWER, ConsistencyOptions
from logprobe.schemas.score import RETAIN, Retain
from logprobe.schemas.tokens import ChatMessage, Text


class BatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Text | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    custom_id: str | None = Field(default=None, max_length=256, description="echoed in the input's result line")
    answer: str | None = Field(default=None, min_length=1, description=f"consistency batches only: {ANSWER}")

    @model_validator(mode="after")
    def _one_source(self) -> BatchInput:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of `text` or `messages`")
        return self


class BatchAnalysis(BaseModel):
    """One analysis to run on every input; the fields mean what they mean in /v1/analysis/{family}."""

    model_config = ConfigDict(extra="forbid")
    family: Family
    methods: list[str] | None = None
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    span: SpanName | SpanRange | list[int] = "all"
    frequency_table: str = DEFAULT_TABLE
    reference_model: str | None = None
    context: str | None = None
    prefix: str | None = None
    member_prefix: str | None = None
    heads: list[str] | None = Field(default=None, max_length=8, description="trained heads to run on every input")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    inputs: list[BatchInput] = Field(min_length=1)
    analyses: list[BatchAnalysis] = Field(default_factory=list, max_length=8, description="none: scoring only")
    consistency: ConsistencyOptions | None = Field(
        default=None,
        description="instead of `analyses`: /v1/analysis/consistency on every input, its `text` (the prompt) or "
        "`messages`, with these options; each line's `results.consistency` is that endpoint's answer",
    )
    include_tokens: bool = Field(default=False, description="per-token values in the result lines")
    retain: Retain | None = Field(default=None, description=RETAIN)


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: Literal["queued", "in_progress", "completed", "cancelled"]
    model: str
    analyses: list[str] = Field(description="the families run on each input (`consistency` for a consistency batch)")
    total: int
    completed: int = Field(description="inputs with a result")
    failed: int = Field(description="inputs whose line carries an error")
    cancelled: int = Field(default=0, description="inputs not run because the batch was cancelled")
    created_at: int
    finished_at: int | None
    expires_at: int | None = Field(default=None, description="unix time the batch and its results are deleted at")


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch] = Field(description="newest first")
    has_more: bool
