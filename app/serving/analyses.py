"""Running an analysis family over a record (or a pair of records): spans, inputs, methods, answers.

The routes and the batch runner both call `analyse`; the methods themselves are pure numpy in `app.analysis`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from app.analysis.base import Context, Family, Method, Positions
from app.analysis.run import (
    ALWAYS_AVAILABLE,
    GAVE_CONTEXT,
    GAVE_MESSAGES,
    AnalysisError,
    finite_values_or_none,
    resolve_params,
    run_methods,
    select_methods,
)
from app.platform.errors import ApiError
from app.serving.bytes import byte_chars
from app.serving.cross import cross_statistics
from app.serving.head_inference import StackInputs, apply_heads
from app.serving.pairs import Pair, chat_reply, context_pair, model_pair
from app.serving.scoring import record_for
from app.serving.services import Services
from app.serving.stack import feature_values
from app.serving.text import TextCodec
from app.serving.token_samples import sampled_logprobs
from logprobe.schemas.analysis import AnalysisRequest, SpanName, SpanRange
from workers.contract.heads import HeadState
from workers.contract.records import RecordMeta

PAIRED_FAMILIES = ("compare", "detect")
# token samples one analysis reads (positions x n_samples): about a second of the gateway's numpy for Lastde++
MAX_SAMPLED_VALUES = 1 << 20
PREFIXES = ("prefix", "member_prefix")  # membership: the text scored again after each (ReCaLL, Con-ReCall)


def _list_positions(span: list[int], n_tokens: int) -> np.ndarray:
    """Distinct positions in [1, T-1]: so never more than T-1 of them (checked first, before any other work)."""
    if len(span) > n_tokens - 1:
        raise ApiError(
            422,
            "invalid_span",
            f"a span lists at most {n_tokens - 1} positions: each position of this record (1 to {n_tokens - 1}) once",
            "span",
        )
    if not span:
        raise ApiError(422, "invalid_span", 'a span lists at least one position (or use "all")', "span")
    if min(span) < 1 or max(span) >= n_tokens:
        raise ApiError(422, "invalid_span", f"positions must lie in [1, {n_tokens - 1}]", "span")
    if len(set(span)) != len(span):
        repeated = next(t for t, count in Counter(span).items() if count > 1)
        raise ApiError(422, "invalid_span", f"position {repeated} appears more than once in the span", "span")
    return np.asarray(span, dtype=np.int64)


def span_positions(
    span: SpanName | SpanRange | list[int], meta: RecordMeta, reply: tuple[int, int] | None = None
) -> np.ndarray:
    """Positions t (1 <= t < T) that a span names; position t is the distribution that predicted token t.
    `reply` is where the last assistant turn's reply lies when the input was a chat ending with one."""
    n_tokens = len(meta.token_ids)
    if isinstance(span, SpanRange):
        if not span.start < span.stop <= n_tokens:
            raise ApiError(422, "invalid_span", f"span must satisfy 1 <= start < stop <= {n_tokens}", "span")
        return np.arange(span.start, span.stop)
    if isinstance(span, list):
        return _list_positions(span, n_tokens)
    if span == "all":
        positions = np.arange(1, n_tokens)
    elif span == "last_turn":
        if reply is None:
            raise ApiError(
                422, "invalid_span", "span 'last_turn' needs `messages` that end with an assistant turn", "span"
            )
        positions = np.arange(max(1, reply[0]), reply[1])
    elif meta.n_prompt is not None:
        positions = np.arange(1, meta.n_prompt) if span == "prompt" else np.arange(meta.n_prompt, n_tokens)
    elif reply is not None:
        positions = np.arange(1, reply[0]) if span == "prompt" else np.arange(max(1, reply[0]), reply[1])
    else:
        raise ApiError(
            422,
            "invalid_span",
            f"span {span!r} needs a generated record (prompt and completion) or `messages` that end with an "
            "assistant turn",
            "span",
        )
    if positions.size == 0:
        raise ApiError(422, "empty_span", f"span {span!r} holds no predicted positions", "span")
    return positions


def analysis_inputs(family: Family, body: AnalysisRequest) -> frozenset[str]:
    """What the request makes available to methods (and markers of what it gave, for error messages)."""
    inputs = set(ALWAYS_AVAILABLE)
    if body.messages is not None:
        inputs.add(GAVE_MESSAGES)
    if body.context is not None:
        inputs.add(GAVE_CONTEXT)
        if family != "compare":
            raise ApiError(422, "invalid_request", f"{family} takes no `context`", "context")
    if body.reference_model is not None:
        if family not in PAIRED_FAMILIES:
            raise ApiError(422, "invalid_request", f"{family} takes no `reference_model`", "reference_model")
        if body.context is not None:
            raise ApiError(422, "invalid_request", "give a `reference_model` or a `context`, not both", "context")
    for field in PREFIXES:
        if getattr(body, field) is not None:
            if family != "membership":
                raise ApiError(422, "invalid_request", f"{family} takes no `{field}`", field)
            if body.messages is not None:
                message = f"a `{field}` goes before a `text` or a record, not `messages`"
                raise ApiError(422, "invalid_request", message, field)
            inputs.add(field)
    if family == "detect" and body.reference_model is None and body.context is None:
        inputs.add("token_samples")
    if body.reference_model is not None or body.context is not None:
        inputs |= {"cross", "reference"}
        if body.messages is not None and body.reference_model is not None:
            inputs.add("turns")
    return frozenset(inputs)


async def _pair(body: AnalysisRequest, services: Services, tenant: str) -> Pair | None:
    if body.reference_model is not None:
        return await model_pair(
            services, tenant, body.model, body.reference_model, body.text, body.messages, body.record_id, body.retain
        )
    if body.context is not None:
        if body.messages is not None:
            raise ApiError(
                422,
                "invalid_request",
                "a `context` comparison takes a `text` or a `record_id`, not `messages`",
                "messages",
            )
        return await context_pair(services, tenant, body.model, body.context, body.text, body.record_id, body.retain)
    return None


async def _prefixed(body: AnalysisRequest, services: Services, tenant: str, methods: list[Method]) -> dict[str, Pair]:
    """The text after each prefix that a chosen method reads (p) and on its own (q), one prefix after the other:
    the second finds the text's own record cached."""
    wanted = [f for f in PREFIXES if any(f in m.requires for m in methods)]
    pairs = {}
    for field in wanted:
        prefix = getattr(body, field)
        pairs[field] = await context_pair(
            services, tenant, body.model, prefix, body.text, body.record_id, body.retain, field=field
        )
    return pairs


async def _token_samples(
    services: Services,
    tenant: str,
    meta: RecordMeta,
    positions: np.ndarray,
    methods: list[Method],
    params: dict[str, dict[str, float]],
) -> np.ndarray | None:
    """Tokens drawn at each position from the record's own rows, for the method that reads them (its count, seed)."""
    wanting = [m for m in methods if "token_samples" in m.requires]
    if not wanting:
        return None
    name, chosen = wanting[0].name, params[wanting[0].name]
    n_samples = int(chosen["n_samples"])
    if positions.size * n_samples > MAX_SAMPLED_VALUES:
        raise ApiError(
            422,
            "samples_too_large",
            f"{name} draws n_samples tokens at each of the span's {positions.size} positions: at most "
            f"{MAX_SAMPLED_VALUES:,} in all (n_samples <= {MAX_SAMPLED_VALUES // positions.size} here)",
            f"params.{name}.n_samples",
        )
    return await sampled_logprobs(services, tenant, meta, positions, n_samples, int(chosen["seed"]))


async def _reply(body: AnalysisRequest, shown: RecordMeta, codec: TextCodec) -> tuple[int, int] | None:
    """The last assistant turn's reply, when the span needs it (the chat is tokenized again: in a thread)."""
    named = body.span == "last_turn" or (body.span in ("prompt", "completion") and shown.n_prompt is None)
    if not named or body.messages is None:
        return None
    return await asyncio.to_thread(chat_reply, codec, body.messages, shown.token_ids)


async def analyse(family: Family, body: AnalysisRequest, services: Services, tenant: str) -> dict[str, Any]:
    try:
        methods = select_methods(family, body.methods, analysis_inputs(family, body), bool(body.heads))
        params = resolve_params(methods, body.params)
    except AnalysisError as exc:
        raise ApiError(422, exc.code, str(exc), exc.param) from exc
    pair = await _pair(body, services, tenant)
    if body.heads and pair is not None and pair.byte_cross is not None:
        raise ApiError(422, "invalid_request", "heads read token records: not with a byte-level pair", "heads")
    prefixed = await _prefixed(body, services, tenant, methods) if pair is None else {}
    if prefixed:
        sides = list(prefixed.values())
        meta, stats, codec = sides[0].q.meta, sides[0].q.stats, sides[0].codec
        cached = all(side.p.cached and side.q.cached for side in sides)
        positions = span_positions(body.span, meta)
        prefixed_positions = {
            field: Positions.select(side.p.meta, side.p.stats, side.p_positions(positions))
            for field, side in prefixed.items()
        }
        shown = meta
        context = Context(Positions.select(meta, stats, positions), {}, prefixed=prefixed_positions)
        head_input = (meta, stats, positions)
    elif pair is None:
        meta, stats, codec, cached = await record_for(
            services,
            tenant,
            model=body.model,
            record_id=body.record_id,
            text=body.text,
            messages=body.messages,
            retain=body.retain,
        )
        shown, positions = meta, span_positions(body.span, meta, await _reply(body, meta, codec))
        context = Context(
            Positions.select(meta, stats, positions),
            {},
            token_samples=await _token_samples(services, tenant, meta, positions, methods, params),
        )
        head_input = (meta, stats, positions)
    else:
        meta, codec, cached, shown = pair.p.meta, pair.codec, pair.p.cached and pair.q.cached, pair.shown
        positions = span_positions(body.span, shown, await _reply(body, shown, codec))
        p_positions = pair.p_positions(positions)
        head_input = (meta, pair.p.stats, p_positions)
        turns = pair.turns(positions)
        if turns is None and any("turns" in m.requires for m in methods):
            raise ApiError(422, "invalid_span", "`drift` goes turn by turn: list the span's positions in order", "span")
        cross = None
        if pair.byte_cross is not None:  # models that tokenize differently, compared byte by byte
            cross = {name: values[p_positions - 1] for name, values in pair.byte_cross.items()}
        elif any("cross" in m.requires for m in methods) or family == "detect":
            cross = await cross_statistics(services, tenant, meta, p_positions, pair.q.meta, positions)
        context = Context(
            Positions.select(meta, pair.p.stats, p_positions),
            {},
            reference=Positions.select(pair.q.meta, pair.q.stats, positions),
            cross=cross,
            turns=turns,
        )
    if any("frequencies" in m.requires for m in methods):
        frequencies = await services.frequencies.probabilities(tenant, codec, body.frequency_table)
        context = dataclasses.replace(context, frequencies=frequencies)
    if context.token_samples is None:
        result = run_methods(methods, context, params)
    else:  # seconds of numpy over the samples: in a thread, not in the event loop
        result = await asyncio.to_thread(run_methods, methods, context, params)
    heads = None
    if body.heads:
        heads = await apply_heads(
            services, tenant, family, body.heads, *head_input, _stack_inputs(body, services, tenant)
        )
        result.sequence.update(heads.sequence)
        result.tokens.update(heads.tokens)
    return {
        "record_id": meta.record_id,
        "model": meta.model,
        "reference_record_id": None if pair is None else pair.q.meta.record_id,
        "reference_model": None if pair is None else pair.q.meta.model,
        "cached": cached,
        "family": family,
        "n_positions": int(positions.size),
        "methods": [m.name for m in methods],
        "level": "token" if pair is None or pair.byte_cross is None else "byte",
        "tokens": token_values(
            result.tokens, shown.token_ids, positions, codec, pair is not None and pair.byte_cross is not None
        )
        if result.tokens
        else [],
        "sequence": result.sequence,
        "details": result.details,
        "decisions": heads.decisions if heads is not None and heads.decisions else None,
        "undefined": result.undefined,
    }


def _stack_inputs(body: AnalysisRequest, services: Services, tenant: str) -> StackInputs:
    """A stack head's feature values for the request's text (or record), each from its own analysis."""

    async def values(state: HeadState) -> np.ndarray:
        assert state.features is not None
        found, _ = await feature_values(
            analyse, services, tenant, state.features, state.model, body.span, body.text, body.messages, body.record_id
        )
        return found

    return values


def token_values(
    values: dict[str, np.ndarray], token_ids: list[int], positions: np.ndarray, codec: TextCodec, by_bytes: bool = False
) -> list[dict[str, Any]]:
    """Per-token answers: position, token, its text, and each token-level method's value (null if undefined).
    `by_bytes`: the "tokens" are the bytes of the text (a byte-level pair), id the byte, text its character."""
    texts = ["", *byte_chars(bytes(token_ids[1:]))] if by_bytes else codec.token_texts(token_ids)
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
