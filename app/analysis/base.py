"""Analysis methods: one class of thing, one flat registry (LM-Polygraph's habit).

Each method declares its name, the families it belongs to, its level (a value per token or one per sequence),
the per-position statistics it needs, its parameters, and which way its score points. Methods are pure numpy
in float64 over the statistics a record already holds, so they run in the gateway on cached records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from workers.protocol import RecordMeta

Level = Literal["token", "sequence"]
Family = Literal["uncertainty", "detect", "membership", "compare"]
Value = np.ndarray | float | dict[str, float] | dict[str, float | list[float]]


@dataclass(frozen=True)
class Param:
    name: str
    default: float
    description: str
    low: float
    high: float


@dataclass(frozen=True)
class Positions:
    """Per-position statistics of a record for the chosen positions (t >= 1), in float64."""

    positions: np.ndarray  # t: the distribution that predicted token t
    token_ids: np.ndarray  # x_t
    logprob: np.ndarray  # log p(x_t)
    rank: np.ndarray
    entropy: np.ndarray  # H_t = -sum p log p
    logp_m2: np.ndarray  # sum p (log p)^2
    kurtosis: np.ndarray
    top_logprobs: np.ndarray  # [n, k], descending

    @classmethod
    def select(cls, meta: RecordMeta, stats: dict[str, np.ndarray], positions: np.ndarray) -> Positions:
        rows = positions - 1
        f64 = {
            name: stats[name][rows].astype(np.float64)
            for name in ("logprob", "rank", "entropy", "logp_m2", "kurtosis", "topk_logprobs")
        }
        return cls(
            positions=positions,
            token_ids=np.asarray(meta.token_ids)[positions],
            logprob=f64["logprob"],
            rank=f64["rank"],
            entropy=f64["entropy"],
            logp_m2=f64["logp_m2"],
            kurtosis=f64["kurtosis"],
            top_logprobs=f64["topk_logprobs"],
        )

    @property
    def n(self) -> int:
        return int(self.positions.shape[0])

    @property
    def logp_mean(self) -> np.ndarray:
        """mu_t = E_p[log p] = -H_t."""
        return -self.entropy

    @property
    def logp_var(self) -> np.ndarray:
        """sigma_t^2 = E_p[(log p)^2] - mu_t^2 (clipped at 0 against rounding)."""
        return np.asarray(np.maximum(self.logp_m2 - self.entropy**2, 0.0))


@dataclass(frozen=True)
class Context:
    """What a method sees. `data` is the model under study (p); with a second model or context, `reference`
    holds the other side's statistics (q) at the same aligned positions and `cross` the statistics that need
    both distributions at once (protocol.CROSS_ARRAYS)."""

    data: Positions
    params: dict[str, float]
    frequencies: np.ndarray | None = None  # reference token frequencies (DC-PDD), smoothed to probabilities
    reference: Positions | None = None
    cross: dict[str, np.ndarray] | None = None
    turns: list[tuple[int, int]] | None = None  # [start, stop) indexes into the positions, one per chat turn


@dataclass(frozen=True)
class Method:
    name: str
    families: tuple[Family, ...]
    level: Level
    description: str  # with the paper it comes from
    higher_means: str
    compute: Callable[[Context], Value]
    needs: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    requires: tuple[str, ...] = ()  # inputs beyond the record, e.g. "frequencies"

    def resolve_params(self, given: dict[str, Any]) -> dict[str, float]:
        known = {p.name: p for p in self.params}
        unknown = set(given) - set(known)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameters {sorted(unknown)}; known: {sorted(known)}")
        values = {p.name: float(given.get(p.name, p.default)) for p in self.params}
        for name, value in values.items():
            p = known[name]
            if not p.low <= value <= p.high:
                raise ValueError(f"{self.name}.{name} must lie in [{p.low}, {p.high}]")
        return values


@dataclass
class Registry:
    methods: dict[str, Method] = field(default_factory=dict)

    def add(self, method: Method) -> Method:
        if method.name in self.methods:
            raise ValueError(f"method {method.name!r} registered twice")
        self.methods[method.name] = method
        return method

    def family(self, family: Family) -> list[Method]:
        return [m for m in self.methods.values() if family in m.families]


REGISTRY = Registry()


def method(
    name: str,
    families: tuple[Family, ...],
    level: Level,
    higher_means: str,
    needs: tuple[str, ...],
    params: tuple[Param, ...] = (),
    requires: tuple[str, ...] = (),
) -> Callable[[Callable[[Context], Value]], Callable[[Context], Value]]:
    """Register a function as a method; its docstring is the method's description."""

    def register(fn: Callable[[Context], Value]) -> Callable[[Context], Value]:
        REGISTRY.add(
            Method(
                name=name,
                families=families,
                level=level,
                description=(fn.__doc__ or "").strip(),
                higher_means=higher_means,
                compute=fn,
                needs=needs,
                params=params,
                requires=requires,
            )
        )
        return fn

    return register


def lowest_fraction_mean(values: np.ndarray, fraction: float) -> float:
    """Mean of the lowest `fraction` of the values (at least one), as Min-K% defines it."""
    k = max(1, int(len(values) * fraction))
    return float(np.mean(np.sort(values)[:k]))
