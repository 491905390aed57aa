"""POST /v1/batches: many texts and the analyses to run on each; GET /v1/batches/{id} for progress,
GET /v1/batches/{id}/results for the JSONL lines (one per input, in input order), POST .../cancel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.analysis.run import AnalysisError, resolve_params, select_methods
from app.api.analysis import AnalysisRequest, SpanName, SpanRange, analysis_inputs
from app.api.tokens import ChatMessage
from app.auth import TenantDep
from app.batches import batch_status, cancel_batch, create_batch, result_lines
from app.errors import ApiError
from app.frequencies import DEFAULT_TABLE
from app.services import ServicesDep

router = APIRouter(tags=["batches"])
BatchId = Annotated[str, Path(pattern=r"^batch_[0-9a-f]{24}$")]


class BatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    custom_id: str | None = Field(default=None, max_length=256, description="echoed in the input's result line")

    @model_validator(mode="after")
    def _one_source(self) -> BatchInput:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of `text` or `messages`")
        return self


class BatchAnalysis(BaseModel):
    """One analysis to run on every input; the fields mean what they mean in /v1/analysis/{family}."""

    model_config = ConfigDict(extra="forbid")
    family: Literal["uncertainty", "detect", "membership", "compare"]
    methods: list[str] | None = None
    params: dict[str, dict[str, float]] = Field(default_factory=dict)
    span: SpanName | SpanRange | list[int] = "all"
    frequency_table: str = DEFAULT_TABLE
    reference_model: str | None = None
    context: str | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    inputs: list[BatchInput] = Field(min_length=1)
    analyses: list[BatchAnalysis] = Field(default_factory=list, max_length=8, description="none: scoring only")
    include_tokens: bool = Field(default=False, description="per-token values in the result lines")


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: Literal["queued", "in_progress", "completed", "cancelled"]
    model: str
    analyses: list[str]
    total: int
    completed: int = Field(description="inputs with a result")
    failed: int = Field(description="inputs whose line carries an error")
    created_at: int
    finished_at: int | None


@router.post("/v1/batches", response_model=Batch)
async def create(body: BatchRequest, services: ServicesDep, tenant: TenantDep) -> Batch:
    limit = services.settings.max_batch_inputs
    if len(body.inputs) > limit:
        raise ApiError(422, "batch_too_large", f"a batch holds at most {limit} inputs", "inputs")
    await services.catalog.card(body.model)  # unknown models fail now, not once per input
    for i, analysis in enumerate(body.analyses):
        options = analysis.model_dump(exclude={"family"})
        if analysis.reference_model is not None:
            await services.catalog.card(analysis.reference_model)
        try:
            request = AnalysisRequest.model_validate({"model": body.model, "text": "x", **options})
            resolve_params(
                select_methods(analysis.family, analysis.methods, analysis_inputs(analysis.family, request)),
                analysis.params,
            )
        except AnalysisError as exc:
            raise ApiError(422, exc.code, f"analyses[{i}]: {exc}", exc.param) from exc
    spec = {
        "model": body.model,
        "analyses": [a.model_dump(mode="json") for a in body.analyses],
        "include_tokens": body.include_tokens,
    }
    inputs = [item.model_dump(mode="json", exclude_none=True) for item in body.inputs]
    batch_id = await create_batch(services.redis, tenant, spec, inputs)
    return Batch.model_validate(await batch_status(services.redis, tenant, batch_id))


@router.get("/v1/batches/{batch_id}", response_model=Batch)
async def get(batch_id: BatchId, services: ServicesDep, tenant: TenantDep) -> Batch:
    return Batch.model_validate(await batch_status(services.redis, tenant, batch_id))


@router.post("/v1/batches/{batch_id}/cancel", response_model=Batch)
async def cancel(batch_id: BatchId, services: ServicesDep, tenant: TenantDep) -> Batch:
    await cancel_batch(services.redis, tenant, batch_id, services.settings.record_ttl_s)
    return Batch.model_validate(await batch_status(services.redis, tenant, batch_id))


@router.get(
    "/v1/batches/{batch_id}/results",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "one JSON line per input"}},
)
async def results(batch_id: BatchId, services: ServicesDep, tenant: TenantDep) -> StreamingResponse:
    status = await batch_status(services.redis, tenant, batch_id)
    if status["status"] not in ("completed", "cancelled"):
        raise ApiError(
            409, "batch_not_finished", f"batch {batch_id!r} is {status['status']}", "batch_id", {"Retry-After": "2"}
        )
    return StreamingResponse(
        result_lines(services.redis, tenant, batch_id, status["total"]),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}.jsonl"'},
    )
