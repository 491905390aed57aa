"""Choosing, parameterising and running methods over the statistics of chosen positions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.analysis.base import REGISTRY, Context, Family, Method, Positions


class AnalysisError(ValueError):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class AnalysisResult:
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    sequence: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, list[float]] = field(default_factory=dict)


def select_methods(family: Family, names: Sequence[str] | None) -> list[Method]:
    available = {m.name: m for m in REGISTRY.family(family)}
    if names is None:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise AnalysisError(
            "unknown_method", f"unknown {family} methods {unknown}; available: {sorted(available)}", "methods"
        )
    return [available[n] for n in dict.fromkeys(names)]


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


def run_methods(
    methods: list[Method], data: Positions, params: dict[str, dict[str, float]], frequencies: np.ndarray | None = None
) -> AnalysisResult:
    result = AnalysisResult()
    with np.errstate(all="ignore"):
        for m in methods:
            value = m.compute(Context(data=data, params=params[m.name], frequencies=frequencies))
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
