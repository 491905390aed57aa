"""Choosing, parameterising and running methods over the statistics of chosen positions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.analysis.base import REGISTRY, Context, Family, Method, ParamError


class AnalysisError(ValueError):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class AnalysisResult:
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # int64 for integer methods, else float64
    sequence: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, list[float]] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)  # why a value (or some token values) is null


ALWAYS_AVAILABLE = frozenset({"frequencies"})
# Inputs that cost the worker a pass over full rows: methods that need them run only when named.
NAMED_ONLY = frozenset({"token_samples"})
# Markers of what a request gave, beside the inputs methods require; they only shape error messages.
GAVE_CONTEXT = "gave:context"
GAVE_MESSAGES = "gave:messages"


def missing_inputs(method: Method, family: Family, inputs: frozenset[str]) -> AnalysisError | None:
    """The one error for a method whose inputs the request lacks: it asks for what is missing, never for what
    was given, and names that field."""
    missing = set(method.requires) - inputs
    if not missing:
        return None
    name = f"`{method.name}`"
    for prefix in ("prefix", "member_prefix"):
        if prefix in missing:
            kind = "non-member" if prefix == "prefix" else "member"
            message = f"{name} scores the text again after {kind} text: give a `{prefix}`"
            return AnalysisError("prefix_required", message, prefix)
    if missing & {"cross", "reference"}:
        if "turns" in method.requires and GAVE_MESSAGES not in inputs:
            message = f"{name} compares two models turn by turn over a chat: give a `reference_model` and `messages`"
        elif "turns" in method.requires or family != "compare":
            message = f"{name} needs a `reference_model`: the second model it compares with"
        else:
            message = f"{name} needs a second distribution: give a `reference_model` or a `context`"
        return AnalysisError("reference_required", message, "reference_model")
    if "token_samples" in missing:
        message = f"{name} samples from the scoring model itself: give no `reference_model` or `context`"
        return AnalysisError("invalid_request", message, "reference_model")
    if "turns" in missing and GAVE_CONTEXT in inputs:
        message = f"{name} compares two models turn by turn over `messages`: give a `reference_model`, not a `context`"
        return AnalysisError("reference_required", message, "context")
    if "turns" in missing:
        message = f"{name} needs `messages`: its turns are the chat's messages, and a text or a record has none"
        return AnalysisError("reference_required", message, "messages")
    return AnalysisError("reference_required", f"{name} needs {sorted(missing)}", "methods")


def select_methods(
    family: Family, names: Sequence[str] | None, inputs: frozenset[str] = ALWAYS_AVAILABLE, heads: bool = False
) -> list[Method]:
    """The named methods (default: those of the family that the request's inputs allow, e.g. a reference
    model for "cross"); a named method whose inputs are missing is an error, and so is naming none at all unless
    the request runs `heads`."""
    family_methods = {m.name: m for m in REGISTRY.family(family)}
    if names is not None and not names and not heads:
        raise AnalysisError(
            "invalid_request",
            "methods names no method and there are no `heads`: nothing to run (leave `methods` out for the whole "
            "family)",
            "methods",
        )
    if names is None:
        chosen = [m for m in family_methods.values() if set(m.requires) <= inputs - NAMED_ONLY]
        if not chosen:
            raise AnalysisError(
                "reference_required", f"{family} needs a `reference_model` or a `context`", "reference_model"
            )
        return chosen
    unknown = [n for n in names if n not in family_methods]
    if unknown:
        raise AnalysisError(
            "unknown_method", f"unknown {family} methods {unknown}; available: {sorted(family_methods)}", "methods"
        )
    chosen = [family_methods[n] for n in dict.fromkeys(names)]
    for m in chosen:
        error = missing_inputs(m, family, inputs)
        if error is not None:
            raise error
    return chosen


def resolve_params(methods: list[Method], given: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    stray = set(given) - {m.name for m in methods}
    if stray:
        raise AnalysisError("invalid_params", f"parameters for methods not run: {sorted(stray)}", "params")
    try:
        return {m.name: m.resolve_params(given.get(m.name, {})) for m in methods}
    except ParamError as exc:
        raise AnalysisError("invalid_params", str(exc), f"params.{exc.path}") from exc


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: a value that is undefined on this input is reported as null."""
    return value if math.isfinite(value) else None


def finite_values_or_none(values: np.ndarray) -> list[Any]:
    """finite_or_none over an array, vectorised: an answer carries thousands of per-token values (integer
    arrays give Python ints)."""
    out: list[Any] = values.tolist()
    if values.dtype.kind == "f":
        for i in np.flatnonzero(~np.isfinite(values)).tolist():
            out[i] = None
    return out


def _sequence_value(result: AnalysisResult, m: Method, key: str, value: float) -> None:
    result.sequence[key] = finite_or_none(value)
    if result.sequence[key] is None:
        result.undefined[key] = m.undefined


def run_methods(methods: list[Method], context: Context, params: dict[str, dict[str, float]]) -> AnalysisResult:
    """Run each method on the shared context with its own parameters; every null gets its reason."""
    result = AnalysisResult()
    with np.errstate(all="ignore"):
        for m in methods:
            value = m.compute(dataclasses.replace(context, params=params[m.name]))
            if m.level == "token":
                column = np.asarray(value, dtype=np.float64)
                bad = int(np.count_nonzero(~np.isfinite(column)))
                if bad:
                    result.undefined[m.name] = f"null at {bad} of {column.size} positions: {m.undefined}"
                result.tokens[m.name] = column.astype(np.int64) if m.integer and not bad else column
            elif isinstance(value, dict):
                for key, v in value.items():
                    if isinstance(v, list):
                        result.details[f"{m.name}.{key}"] = v
                    else:
                        _sequence_value(result, m, f"{m.name}.{key}", float(v))
            else:
                _sequence_value(result, m, m.name, float(value))
    return result
