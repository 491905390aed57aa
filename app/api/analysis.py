"""POST /v1/analysis/{uncertainty,detect,membership}: methods over a record's distributions, on demand.
GET /v1/analysis/methods lists them; /v1/frequency-tables holds the reference tables DC-PDD needs."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from app.analysis import REGISTRY
from app.analysis.base import Context, Family, Positions
from app.analysis.run import (
    ALWAYS_AVAILABLE,
    AnalysisError,
    finite_values_or_none,
    resolve_params,
    run_methods,
    select_methods,
)
from app.api.prebuilt import json_answer
from app.api.tokens import ChatMessage
from app.auth import TenantDep, current_tenant
from app.calibrations import calibration_id, decisions, load_calibration
from app.cross import cross_statistics
from app.errors import ApiError
from app.frequencies import DEFAULT_TABLE
from app.pairs import context_pair, model_pair
from app.scoring import record_for
from app.services import ServicesDep
from app.text import TextCodec
from workers.protocol import RecordMeta

router = APIRouter(tags=["analysis"])

SpanName = Literal["all", "prompt", "completion"]
PAIRED_FAMILIES = ("compare", "detect")


class SpanRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int = Field(ge=1, description="first position")
    stop: int = Field(ge=2, description="one past the last position")


class AnalysisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    record_id: str | None = None
    text: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    span: SpanName | SpanRange | list[int] = Field(
        default="all", description="all, prompt, completion (generated records), {start, stop}, or positions"
    )
    methods: list[str] | None = Field(default=None, description="default: every method of the family")
    params: dict[str, dict[str, float]] = Field(default_factory=dict, description="per method, e.g. {min_k: {k: 0.1}}")
    frequency_table: str = Field(default=DEFAULT_TABLE, description="reference token frequencies for dc_pdd")
    reference_model: str | None = Field(
        default=None, description="compare/detect: the second model (reference, observer or base), same tokenizer"
    )
    context: str | None = Field(default=None, description="compare: the model with this context before the text")


class TokenValues(BaseModel):
    position: int
    id: int
    text: str
    values: dict[str, float | None]


class Decision(BaseModel):
    machine: bool
    sign: float
    threshold: float
    target_fpr: float


class AnalysisResponse(BaseModel):
    record_id: str
    model: str
    reference_record_id: str | None = None
    reference_model: str | None = None
    cached: bool
    family: str
    n_positions: int
    methods: list[str]
    tokens: list[TokenValues]
    sequence: dict[str, float | None]
    details: dict[str, list[float]]
    decisions: dict[str, Decision] | None = Field(
        default=None, description="detect: per calibrated method, whether the text is judged machine-written"
    )


def span_positions(span: SpanName | SpanRange | list[int], meta: RecordMeta) -> np.ndarray:
    """Positions t (1 <= t < T) that a span names; position t is the distribution that predicted token t."""
    n_tokens = len(meta.token_ids)
    if isinstance(span, SpanRange):
        if not span.start < span.stop <= n_tokens:
            raise ApiError(422, "invalid_span", f"span must satisfy 1 <= start < stop <= {n_tokens}", "span")
        return np.arange(span.start, span.stop)
    if isinstance(span, list):
        positions = np.asarray(span, dtype=np.int64)
        if positions.size == 0 or positions.min() < 1 or positions.max() >= n_tokens:
            raise ApiError(422, "invalid_span", f"positions must lie in [1, {n_tokens - 1}]", "span")
        return positions
    if span == "all":
        positions = np.arange(1, n_tokens)
    elif meta.n_prompt is None:
        raise ApiError(422, "invalid_span", f"span {span!r} needs a generated record (prompt and completion)", "span")
    else:
        positions = np.arange(1, meta.n_prompt) if span == "prompt" else np.arange(meta.n_prompt, n_tokens)
    if positions.size == 0:
        raise ApiError(422, "empty_span", f"span {span!r} holds no predicted positions", "span")
    return positions


def analysis_inputs(family: Family, body: AnalysisRequest) -> frozenset[str]:
    inputs = set(ALWAYS_AVAILABLE)
    if body.reference_model is not None or body.context is not None:
        if family not in PAIRED_FAMILIES or (body.context is not None and family != "compare"):
            raise ApiError(422, "invalid_request", f"{family} takes no reference model or context", "reference_model")
        if body.reference_model is not None and body.context is not None:
            raise ApiError(422, "invalid_request", "give a `reference_model` or a `context`, not both", "context")
        if body.record_id is not None:
            raise ApiError(
                422, "invalid_request", "paired analyses take a text or messages, not a record_id", "record_id"
            )
        inputs |= {"cross", "reference"}
        if body.messages is not None and body.reference_model is not None:
            inputs.add("turns")
    return frozenset(inputs)


async def analyse(family: Family, body: AnalysisRequest, services: ServicesDep, tenant: str) -> dict[str, Any]:
    try:
        methods = select_methods(family, body.methods, analysis_inputs(family, body))
        params = resolve_params(methods, body.params)
    except AnalysisError as exc:
        raise ApiError(422, exc.code, str(exc), exc.param) from exc
    pair = None
    if body.reference_model is not None:
        if body.model is None:
            raise ApiError(422, "missing_input", "a paired analysis needs a `model`", "model")
        pair = await model_pair(services, tenant, body.model, body.reference_model, body.text, body.messages)
    elif body.context is not None:
        if body.model is None:
            raise ApiError(422, "missing_input", "a paired analysis needs a `model`", "model")
        pair = await context_pair(services, tenant, body.model, body.context, body.text)
    if pair is None:
        meta, stats, codec, cached = await record_for(
            services, tenant, model=body.model, record_id=body.record_id, text=body.text, messages=body.messages
        )
        shown, positions = meta, span_positions(body.span, meta)
        context = Context(Positions.select(meta, stats, positions), {})
    else:
        meta, codec, cached, shown = pair.p.meta, pair.codec, pair.p.cached and pair.q.cached, pair.q.meta
        positions = span_positions(body.span, shown)
        p_positions = pair.p_positions(positions)
        cross = None
        if any("cross" in m.requires for m in methods) or family == "detect":
            cross = await cross_statistics(services, tenant, meta, p_positions, pair.q.meta, positions)
        context = Context(
            Positions.select(meta, pair.p.stats, p_positions),
            {},
            reference=Positions.select(pair.q.meta, pair.q.stats, positions),
            cross=cross,
            turns=pair.turns(positions),
        )
    if any("frequencies" in m.requires for m in methods):
        frequencies = await services.frequencies.probabilities(tenant, codec, body.frequency_table)
        context = dataclasses.replace(context, frequencies=frequencies)
    result = run_methods(methods, context, params)
    return {
        "record_id": meta.record_id,
        "model": meta.model,
        "reference_record_id": None if pair is None else pair.q.meta.record_id,
        "reference_model": None if pair is None else pair.q.meta.model,
        "cached": cached,
        "family": family,
        "n_positions": int(positions.size),
        "methods": [m.name for m in methods],
        "tokens": token_values(result.tokens, shown.token_ids, positions, codec) if result.tokens else [],
        "sequence": result.sequence,
        "details": result.details,
        "decisions": None,
    }


def token_values(
    values: dict[str, np.ndarray], token_ids: list[int], positions: np.ndarray, codec: TextCodec
) -> list[dict[str, Any]]:
    """Per-token answers: position, token, its text, and each token-level method's value (null if undefined)."""
    texts = codec.token_texts(token_ids)
    columns = {name: finite_values_or_none(column) for name, column in values.items()}
    return [
        {
            "position": t,
            "id": token_ids[t],
            "text": texts[t],
            "values": {name: column[i] for name, column in columns.items()},
        }
        for i, t in enumerate(positions.tolist())
    ]


@router.post("/v1/analysis/uncertainty", response_model=AnalysisResponse)
async def uncertainty(body: AnalysisRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Token logprob, rank, entropy, margin and kurtosis; sequence mean probabilities, perplexity, entropy."""
    return json_answer(await analyse("uncertainty", body, services, tenant))


@router.post("/v1/analysis/detect", response_model=AnalysisResponse)
async def detect(body: AnalysisRequest, services: ServicesDep, tenant: TenantDep) -> Response:
    """Machine-written text detection scores, with calibrated decisions where a calibration exists."""
    result = await analyse("detect", body, services, tenant)
    calibration = await load_calibration(services, tenant, calibration_id(result["model"], body.reference_model))
    if calibration is not None:
        result["decisions"] = decisions(calibration, result["sequence"])
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


class ParamInfo(BaseModel):
    name: str
    default: float
    min: float
    max: float
    description: str


class MethodInfo(BaseModel):
    name: str
    families: list[str]
    level: str
    description: str
    higher_means: str
    needs: list[str]
    requires: list[str]
    params: list[ParamInfo]


@router.get("/v1/analysis/methods", response_model=list[MethodInfo], dependencies=[Depends(current_tenant)])
async def list_methods() -> list[MethodInfo]:
    return [
        MethodInfo(
            name=m.name,
            families=list(m.families),
            level=m.level,
            description=m.description,
            higher_means=m.higher_means,
            needs=list(m.needs),
            requires=list(m.requires),
            params=[
                ParamInfo(name=p.name, default=p.default, min=p.low, max=p.high, description=p.description)
                for p in m.params
            ],
        )
        for m in REGISTRY.methods.values()
    ]


class FrequencyTableRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    texts: list[str] = Field(min_length=1, max_length=100_000)


class FrequencyTableInfo(BaseModel):
    name: str
    model: str
    texts: int
    tokens: int
    distinct_tokens: int


@router.put("/v1/frequency-tables/{name}", response_model=FrequencyTableInfo)
async def put_frequency_table(
    name: Annotated[str, Path(max_length=64)], body: FrequencyTableRequest, services: ServicesDep, tenant: TenantDep
) -> dict[str, int | str]:
    """Count a corpus with the model's tokenizer and keep the table under `name` (for dc_pdd)."""
    card = await services.catalog.card(body.model)
    codec = await services.catalog.codec(card)
    return await services.frequencies.build(tenant, codec, name, body.texts)
