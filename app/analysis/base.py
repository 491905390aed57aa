"""Analysis methods: one class of thing, one flat registry (LM-Polygraph's habit).

Each method declares its name, the families it belongs to, its level (a value per token or one per sequence),
the per-position statistics it needs, its parameters, the paper it comes from, which way its score points, and
why its value can be undefined (null). Methods are pure numpy in float64 over the statistics a record already
holds, so they run in the gateway on cached records. A method returns NaN where its value is undefined.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from app.analysis.samples import SampleSet
from workers.contract.records import RecordMeta

Level = Literal["token", "sequence"]
Family = Literal["uncertainty", "detect", "membership", "compare", "consistency"]
ParamKind = Literal["int", "float"]
Value = np.ndarray | float | dict[str, float] | dict[str, float | list[float]]

# A variance computed as E[x^2] - E[x]^2 from float32 statistics carries rounding of about 1e-6 E[x^2] (the
# moments are sums over the whole vocabulary): below VAR_RTOL E[x^2] it cannot be told from 0.
VAR_RTOL = 1e-5
VAR_ATOL = 1e-12
UNIFORM_RTOL = 1e-5  # an entropy within this fraction of log V is log V: the distribution is uniform
NOT_FINITE = "the value is not a finite number on this input"


@dataclass(frozen=True)
class Param:
    name: str
    default: float
    description: str
    low: float
    high: float
    kind: ParamKind = "float"

    def resolve(self, given: Any, method: str) -> float:
        """The value to run with (an int for integer parameters); ParamError if it is not one or out of range.

        As strict as the request's top level: `"16"`, `true` and, for an integer, `16.0` are refused."""
        if self.kind == "int" and (isinstance(given, bool) or not isinstance(given, int)):
            raise ParamError(f"{method}.{self.name} must be an integer (not {as_json(given)})", method, self.name)
        if isinstance(given, bool) or not isinstance(given, int | float):
            raise ParamError(f"{method}.{self.name} must be a number (not {as_json(given)})", method, self.name)
        if not self.low <= given <= self.high:  # before float(): an integer past a float's range is out of range too
            raise ParamError(f"{method}.{self.name} must lie in [{self.low:g}, {self.high:g}]", method, self.name)
        return given if self.kind == "int" else float(given)


class ParamError(ValueError):
    """A method parameter that cannot run; `path` is where it sits under the request's `params`."""

    def __init__(self, message: str, method: str, name: str | None = None) -> None:
        super().__init__(message)
        self.path = f"{method}.{name}" if name is not None else method


def as_json(value: Any) -> str:
    """A value as the request spelled it, for messages (`"16"`, `true`, `16.0`)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def variance_is_zero(var: Any, second_moment: Any) -> Any:
    """Where a variance E[x^2] - E[x]^2 (a float or an array) is 0 within the rounding of its float32 moments."""
    return np.asarray(var) <= VAR_RTOL * np.abs(np.asarray(second_moment)) + VAR_ATOL


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
    vocab_size: int = 0

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
            vocab_size=meta.vocab_size,
        )

    @property
    def n(self) -> int:
        return int(self.positions.shape[0])

    @property
    def logp_mean(self) -> np.ndarray:
        """mu_t = E_p[log p] = -H_t."""
        return -self.entropy

    @property
    def uniform(self) -> np.ndarray:
        """Where the distribution is uniform: its entropy is log V within the rounding of float32 sums."""
        return np.asarray(self.entropy >= np.log(self.vocab_size) * (1.0 - UNIFORM_RTOL))

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
    prefixed: dict[str, Positions] | None = None  # "prefix", "member_prefix": the text scored after that prefix
    samples: SampleSet | None = None  # consistency: the SampleSet (app.analysis.consistency) of n sampled answers
    # "token_samples": log p of tokens drawn independently at each position from p itself, [n positions, n samples]
    token_samples: np.ndarray | None = None


@dataclass(frozen=True)
class Method:
    name: str
    families: tuple[Family, ...]
    level: Level
    description: str  # one paragraph
    paper: str  # title, authors and year, arXiv id where there is one
    higher_means: str
    compute: Callable[[Context], Value]
    needs: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    requires: tuple[str, ...] = ()  # inputs beyond the record, e.g. "frequencies"
    integer: bool = False  # token values are integers (ranks)
    undefined: str = NOT_FINITE  # why a value can be null

    def resolve_params(self, given: dict[str, Any]) -> dict[str, float]:
        known = {p.name: p for p in self.params}
        unknown = set(given) - set(known)
        if unknown:
            raise ParamError(f"{self.name}: unknown parameters {sorted(unknown)}; known: {sorted(known)}", self.name)
        return {p.name: p.resolve(given.get(p.name, p.default), self.name) for p in self.params}


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


def paragraph(doc: str | None) -> str:
    """A docstring as one paragraph: dedented, its lines joined by single spaces."""
    return " ".join(inspect.cleandoc(doc or "").split())


def method(
    name: str,
    families: tuple[Family, ...],
    level: Level,
    higher_means: str,
    needs: tuple[str, ...],
    *,
    paper: str,
    params: tuple[Param, ...] = (),
    requires: tuple[str, ...] = (),
    integer: bool = False,
    undefined: str = NOT_FINITE,
) -> Callable[[Callable[[Context], Value]], Callable[[Context], Value]]:
    """Register a function as a method; its docstring is the method's description."""

    def register(fn: Callable[[Context], Value]) -> Callable[[Context], Value]:
        REGISTRY.add(
            Method(
                name=name,
                families=families,
                level=level,
                description=paragraph(fn.__doc__),
                paper=paper,
                higher_means=higher_means,
                compute=fn,
                needs=needs,
                params=params,
                requires=requires,
                integer=integer,
                undefined=undefined,
            )
        )
        return fn

    return register


def lowest_fraction_mean(values: np.ndarray, fraction: float) -> float:
    """Mean of the lowest `fraction` of the values (at least one), as Min-K% defines it."""
    k = max(1, int(len(values) * fraction))
    return float(np.mean(np.sort(values)[:k]))
