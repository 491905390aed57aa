"""Choosing, parameterising and running methods over the statistics of chosen positions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.analysis.base import REGISTRY, Context, Family, Method


class AnalysisError(ValueError):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class AnalysisResult:
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    sequence: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, list[float]] = field(default_factory=dict)


ALWAYS_AVAILABLE = frozenset({"frequencies"})


def select_methods(
    family: Family, names: Sequence[str] | None, inputs: frozenset[str] = ALWAYS_AVAILABLE
) -> list[Method]:
    """The named methods (default: those of the family that the request's inputs allow, e.g. a reference
    model for "cross"); a named method whose inputs are missing is an error."""
    family_methods = {m.name: m for m in REGISTRY.family(family)}
    if names is None:
        chosen = [m for m in family_methods.values() if set(m.requires) <= inputs]
        if not chosen:
            raise AnalysisError("reference_required", f"{family} needs a `reference_model` or a `context`")
        return chosen
    unknown = [n for n in names if n not in family_methods]
    if unknown:
        raise AnalysisError(
            "unknown_method", f"unknown {family} methods {unknown}; available: {sorted(family_methods)}", "methods"
        )
    chosen = [family_methods[n] for n in dict.fromkeys(names)]
    for m in chosen:
        missing = set(m.requires) - inputs
        if missing:
            raise AnalysisError(
                "reference_required",
                f"{m.name} needs {sorted(missing)}: give a `reference_model` (or a `context`; `messages` for turns)",
                "methods",
            )
    return chosen


def resolve_params(methods: list[Method], given: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    stray = set(given) - {m.name for m in methods}
    if stray:
        raise AnalysisError("invalid_params", f"parameters for methods not run: {sorted(stray)}", "params")
    try:
        return {m.name: m.resolve_params(given.get(m.name, {})) for m in methods}
    except ValueError as exc:
        raise AnalysisError("invalid_params", str(exc), "params") from exc


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: a value that is undefined on this input is reported as null."""
    return value if math.isfinite(value) else None


def finite_values_or_none(values: np.ndarray) -> list[float | None]:
    """finite_or_none over an array, vectorised: an answer carries thousands of per-token values."""
    out: list[float | None] = values.tolist()
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        out[i] = None
    return out


def run_methods(methods: list[Method], context: Context, params: dict[str, dict[str, float]]) -> AnalysisResult:
    """Run each method on the shared context with its own parameters."""
    result = AnalysisResult()
    with np.errstate(all="ignore"):
        for m in methods:
            value = m.compute(dataclasses.replace(context, params=params[m.name]))
            if m.level == "token":
                result.tokens[m.name] = np.asarray(value, dtype=np.float64)
            elif isinstance(value, dict):
                for key, v in value.items():
                    if isinstance(v, list):
                        result.details[f"{m.name}.{key}"] = v
                    else:
                        result.sequence[f"{m.name}.{key}"] = finite_or_none(float(v))
            else:
                result.sequence[m.name] = finite_or_none(float(value))
    return result
