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
from app.serving.consistency import consistency
from app.serving.services import Services
from logprobe.schemas.analysis import AnalysisRequest, SpanName, SpanRange
from logprobe.schemas.consistency import ConsistencyOptions, ConsistencyRequest
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
        if feature.consistency is not None and family != "consistency":
            raise ApiError(
                422, "invalid_features", f"{where}: only consistency methods take `consistency`", f"{where}.consistency"
            )
        if family == "consistency" and feature.reference_model is not None:
            raise ApiError(
                422, "invalid_features", f"{where}: consistency takes no reference_model", f"{where}.reference_model"
            )
        if feature.consistency is not None and feature.consistency.methods is not None:
            raise ApiError(
                422,
                "invalid_features",
                f"{where}: the feature names its method; leave consistency.methods out",
                f"{where}.consistency.methods",
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
        options = (feature.consistency or ConsistencyOptions()).model_dump() if family == "consistency" else None
        out.append({**feature.model_dump(), "family": family, "model": model, "value": value, "consistency": options})
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


Group = tuple[str, str | None, str | None, str]  # family, model, reference model, consistency options


def _key(f: dict[str, Any]) -> Group:
    return f["family"], f["model"], f["reference_model"], json.dumps(f.get("consistency"), sort_keys=True)


def _groups(features: list[dict[str, Any]]) -> list[tuple[Group, dict[str, str]]]:
    """Features that one analysis answers together: same family, models and sampling, and each method with one
    set of parameters (a method asked twice with other parameters runs again). Each group: its key, method ->
    params id."""
    groups: list[tuple[Group, dict[str, str]]] = []
    for f in features:
        key = _key(f)
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
    for group, methods in _groups(features):
        family, model, reference, _ = group
        if family == "consistency":
            answer = await _consistency(services, tenant, features, group, methods, head_model, messages)
            _read(values, features, group, methods, answer["sequence"])
            continue
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
        _read(values, features, group, methods, answer["sequence"])
    if head_record is None:  # every feature reads another model: the head's own record is made for the text
        answer = await run("uncertainty", _plain(head_model, span, text, messages, record_id), services, tenant)
        head_record = answer["record_id"]
    return values, head_record


def _read(
    values: np.ndarray, features: list[dict[str, Any]], group: Group, methods: dict[str, str], sequence: dict[str, Any]
) -> None:
    """Fill in the values of the group's features from its analysis's `sequence` (NaN where undefined)."""
    for i, f in enumerate(features):
        if _key(f) != group or methods.get(f["method"]) != json.dumps(f["params"], sort_keys=True):
            continue
        if f["value"] not in sequence:
            known = sorted(k for k in sequence if k.split(".")[0] == f["method"])
            raise ApiError(422, "invalid_features", f"features.{i}: {f['method']} gives {known}, not {f['value']!r}")
        value = sequence[f["value"]]
        values[i] = np.nan if value is None else float(value)


async def _consistency(
    services: Services,
    tenant: str,
    features: list[dict[str, Any]],
    group: Group,
    methods: dict[str, str],
    head_model: str,
    messages: list[ChatMessage] | None,
) -> dict[str, Any]:
    """The consistency analysis of the text's answer: `messages` are the prompt and, last, the assistant's answer
    being judged (Kuhn et al. 2023 and the methods' papers: consistency judges an answer to a question)."""
    if messages is None or len(messages) < 2 or messages[-1].role != "assistant":
        raise ApiError(
            422,
            "stack_needs_messages",
            "this stack head judges answers by consistency: give `messages` ending with the assistant's answer "
            "(the prompt is what comes before it)",
            "messages",
        )
    _, model, _, options = group
    body = ConsistencyRequest(
        **json.loads(options) | {"methods": list(methods)},
        model=model or head_model,
        messages=messages[:-1],
        answer=messages[-1].content,
    )
    return await consistency(body, services, tenant)


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
