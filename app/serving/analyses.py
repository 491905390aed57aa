"""Running an analysis family over a record (or a pair of records): spans, inputs, methods, answers.

The routes and the batch runner both call `analyse`; the methods themselves are pure numpy in `app.analysis`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from app.analysis.base import Context, Family, Positions
from app.analysis.run import (
    ALWAYS_AVAILABLE,
    AnalysisError,
    finite_values_or_none,
    resolve_params,
    run_methods,
    select_methods,
)
from app.platform.errors import ApiError
from app.schemas.analysis import AnalysisRequest, SpanName, SpanRange
from app.serving.cross import cross_statistics
from app.serving.pairs import context_pair, model_pair
from app.serving.scoring import record_for
from app.serving.services import Services
from app.serving.text import TextCodec
from workers.protocol import RecordMeta

PAIRED_FAMILIES = ("compare", "detect")


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


async def analyse(family: Family, body: AnalysisRequest, services: Services, tenant: str) -> dict[str, Any]:
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
