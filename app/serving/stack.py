"""A `stack` head's inputs: the sequence values of analysis methods, from any served model (paired and byte-level
methods included), read off the same analyses the routes answer. Checked when the head is asked for; computed for
each training example by the head's preparation and for each analysed text when the head is applied."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from app.analysis import REGISTRY
from app.analysis.base import ParamError
from app.platform.errors import ApiError
from app.serving.services import Services
from logprobe.schemas.analysis import AnalysisRequest, SpanName, SpanRange
from logprobe.schemas.heads import StackFeature
from logprobe.schemas.tokens import ChatMessage

PAIRED = ("compare", "detect")
Run = Callable[[Any, AnalysisRequest, Services, str], Awaitable[dict[str, Any]]]


def check_features(features: list[StackFeature] | None, head_model: str) -> list[dict[str, Any]]:
    """The features as stored: each method known and sequence-level, its family one of the method's, a reference
    model only where the family pairs, its parameters valid, the value a key the method can give; `model` left
    out where it is the head's own. 422 `invalid_features` (its `param` the feature's path) otherwise."""
    if not features:
        raise ApiError(422, "invalid_features", "a stack head needs `features`: the methods it combines", "features")
    out = []
    for i, feature in enumerate(features):
        where = f"features.{i}"
        m = REGISTRY.methods.get(feature.method)
        if m is None:
            raise ApiError(422, "invalid_features", f"{where}: no method {feature.method!r}", f"{where}.method")
        if m.level != "sequence":
            raise ApiError(
                422, "invalid_features", f"{where}: {m.name} gives a value per token, not per text", f"{where}.method"
            )
        family = feature.family or m.families[0]
        if family not in m.families:
            raise ApiError(
                422, "invalid_features", f"{where}: {m.name} is a method of {list(m.families)}", f"{where}.family"
            )
        if feature.reference_model is not None and family not in PAIRED:
            raise ApiError(
                422, "invalid_features", f"{where}: {family} takes no reference_model", f"{where}.reference_model"
            )
        if "token_samples" in m.requires and feature.reference_model is not None:
            raise ApiError(
                422,
                "invalid_features",
                f"{where}: {m.name} samples from the scoring model itself: no reference_model",
                f"{where}.reference_model",
            )
        if family == "compare" and feature.reference_model is None:
            raise ApiError(
                422, "invalid_features", f"{where}: compare needs a reference_model", f"{where}.reference_model"
            )
        try:
            m.resolve_params(feature.params)
        except ParamError as exc:
            raise ApiError(422, "invalid_features", f"{where}: {exc}", f"{where}.params") from exc
        value = feature.value or m.name
        if value != m.name and not value.startswith(m.name + "."):
            raise ApiError(
                422, "invalid_features", f"{where}: {m.name} gives {m.name} or {m.name}.<key>", f"{where}.value"
            )
        model = None if feature.model in (None, head_model) else feature.model
        out.append({**feature.model_dump(), "family": family, "model": model, "value": value})
    return out


async def fingerprints(services: Services, features: list[dict[str, Any]]) -> dict[str, str]:
    """The fingerprint of each other model the features read (404 for one that is not served)."""
    found = {}
    for i, f in enumerate(features):
        for field in ("model", "reference_model"):
            if f[field] is not None and f[field] not in found:
                card = await services.catalog.card(f[field], f"features.{i}.{field}")
                found[f[field]] = card.fingerprint
    return found


def other_models(features: list[dict[str, Any]]) -> int:
    """How many models besides the head's own score each text."""
    return len({f[k] for f in features for k in ("model", "reference_model") if f[k] is not None})


def _groups(features: list[dict[str, Any]]) -> list[tuple[tuple[str, str | None, str | None], dict[str, str]]]:
    """Features that one analysis answers together: same family and models, and each method with one set of
    parameters (a method asked twice with other parameters runs again). Each group: its key, method -> params id."""
    groups: list[tuple[tuple[str, str | None, str | None], dict[str, str]]] = []
    for f in features:
        key = (f["family"], f["model"], f["reference_model"])
        params = json.dumps(f["params"], sort_keys=True)
        group = next((g for k, g in groups if k == key and g.get(f["method"], params) == params), None)
        if group is None:
            group = {}
            groups.append((key, group))
        group[f["method"]] = params
    return groups


async def feature_values(
    run: Run,
    services: Services,
    tenant: str,
    features: list[dict[str, Any]],
    head_model: str,
    span: SpanName | SpanRange | list[int],
    text: str | None,
    messages: list[ChatMessage] | None,
    record_id: str | None,
) -> tuple[np.ndarray, str]:
    """The features' values for one text (NaN where a method's value is undefined) and the id of the head
    model's record of it. A record alone serves the features of the head's own model; other models read the text."""
    values = np.full(len(features), np.nan)
    head_record: str | None = None
    for (family, model, reference), methods in _groups(features):
        if model is not None and text is None and messages is None:
            raise ApiError(
                422,
                "stack_needs_text",
                f"this stack head reads {model!r} too, which scores the text itself: give the `text` or `messages`, "
                "not only a `record_id`",
                "record_id",
            )
        by_record = model is None and record_id is not None
        body = AnalysisRequest(
            model=model or head_model,
            record_id=record_id if by_record else None,
            text=None if by_record else text,
            messages=None if by_record else messages,
            span=span,
            methods=list(methods),
            params={name: json.loads(p) for name, p in methods.items()},
            reference_model=reference,
        )
        answer = await run(family, body, services, tenant)
        if model is None:
            head_record = answer["record_id"]
        for i, f in enumerate(features):
            if (f["family"], f["model"], f["reference_model"]) != (family, model, reference):
                continue
            if methods.get(f["method"]) != json.dumps(f["params"], sort_keys=True):
                continue
            if f["value"] not in answer["sequence"]:
                known = sorted(k for k in answer["sequence"] if k.split(".")[0] == f["method"])
                raise ApiError(
                    422, "invalid_features", f"features.{i}: {f['method']} gives {known}, not {f['value']!r}"
                )
            value = answer["sequence"][f["value"]]
            values[i] = np.nan if value is None else float(value)
    if head_record is None:  # every feature reads another model: the head's own record is made for the text
        answer = await run("uncertainty", _plain(head_model, span, text, messages, record_id), services, tenant)
        head_record = answer["record_id"]
    return values, head_record


def _plain(
    model: str,
    span: SpanName | SpanRange | list[int],
    text: str | None,
    messages: list[ChatMessage] | None,
    record_id: str | None,
) -> AnalysisRequest:
    if record_id is not None:
        return AnalysisRequest(model=model, record_id=record_id, span=span, methods=["perplexity"])
    return AnalysisRequest(model=model, text=text, messages=messages, span=span, methods=["perplexity"])
