"""Running trained heads over a record in the gateway: the head's weights from Redis, its inputs from the record
(features from the statistics, hidden states for pawn and probe), numpy forward passes (`app.analysis.heads`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from threadpoolctl import ThreadpoolController

from app.analysis.heads import los_forward, pawn_forward, probe_forward, sigmoid, stack_forward
from app.platform.errors import ApiError
from app.serving.layers import layer_states
from app.serving.services import Services
from workers.contract.head_features import los_features, pawn_features
from workers.contract.heads import HeadMetrics, HeadState
from workers.contract.keys import head_key
from workers.contract.names import as_bytes
from workers.contract.records import RecordMeta

CACHE_SIZE = 64  # decoded weights kept per gateway process, keyed by the head's stored state
# A head's matrices are small: BLAS threads cost more than they give (10x under CPU contention), so one thread.
_BLAS = ThreadpoolController()


@dataclass
class HeadAnswers:
    sequence: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)


StackInputs = Callable[[HeadState], Awaitable[np.ndarray]]  # a stack head's feature values for the analysed text

_weights: OrderedDict[tuple[str, bytes], dict[str, np.ndarray]] = OrderedDict()


def head_not_found(head_id: str) -> ApiError:
    return ApiError(404, "head_not_found", f"head {head_id!r} not found", "heads")


async def trained_head(services: Services, tenant: str, head_id: str) -> tuple[HeadState, dict[str, np.ndarray]]:
    """A succeeded head's state and weights; 404 for one this tenant does not have, 409 while it trains."""
    if not head_id.startswith("head_") or ":" in head_id:
        raise head_not_found(head_id)
    raw_state, raw_weights = map(as_bytes, await services.redis.hmget(head_key(tenant, head_id), ["state", "weights"]))
    if raw_state is None:
        raise head_not_found(head_id)
    state = HeadState.model_validate_json(raw_state)
    if state.status != "succeeded" or raw_weights is None:
        raise ApiError(409, "head_not_ready", f"head {head_id!r} is {state.status}, not trained", "heads")
    key = (f"{tenant}:{head_id}", raw_state)
    weights = _weights.get(key)
    if weights is None:
        weights = {name: np.asarray(a, dtype=np.float64) for name, a in st_load(raw_weights).items()}
        _weights[key] = weights
        while len(_weights) > CACHE_SIZE:
            _weights.popitem(last=False)
    return state, weights


async def check_heads(services: Services, tenant: str, family: str, model: str, head_ids: list[str]) -> None:
    """Before a batch runs: every head exists for this key, is trained, and fits the family and model."""
    card = await services.catalog.card(model)
    for head_id in head_ids:
        state, _ = await trained_head(services, tenant, head_id)
        _check_fit(head_id, state, family, card.name, card.fingerprint)


def _check_fit(head_id: str, state: HeadState, family: str, model: str, fingerprint: str) -> None:
    if state.kind == "lens":
        message = f"head {head_id!r} is a tuned lens: read it with POST /v1/analysis/lens (lens: its id)"
        raise ApiError(422, "head_kind_mismatch", message, "heads")
    if state.fingerprint != fingerprint:
        raise ApiError(
            422,
            "head_model_mismatch",
            f"head {head_id!r} was trained on {state.model!r} records (fingerprint {state.fingerprint[:12]}), "
            f"not on {model!r} as it is served now",
            "heads",
        )
    if state.family != family:
        raise ApiError(422, "head_family_mismatch", f"head {head_id!r} is a {state.family} head", "heads")


async def apply_heads(
    services: Services,
    tenant: str,
    family: str,
    head_ids: list[str],
    meta: RecordMeta,
    stats: dict[str, np.ndarray],
    positions: np.ndarray,
    stack_inputs: StackInputs | None = None,
) -> HeadAnswers:
    """Each head's score (the probability of label 1), per-position weights (pawn: the gate; los: attention) and
    decision at its cross-validated threshold, over the positions of the record. A stack head reads the values of
    its features (`stack_inputs`) instead of the record."""
    answers = HeadAnswers()
    states: dict[int | None, np.ndarray] = {}  # by layer: None the final states, else a probe's layer (#32)
    for head_id in head_ids:
        state, w = await trained_head(services, tenant, head_id)
        _check_fit(head_id, state, family, meta.model, meta.fingerprint)
        if state.kind == "stack":
            if stack_inputs is None:
                raise ApiError(422, "invalid_request", f"head {head_id!r} is a stack head: not here", "heads")
            await _check_feature_models(services, head_id, state)
            _add(answers, state, sigmoid(stack_forward(w, await stack_inputs(state))))
            continue
        metrics = state.metrics if isinstance(state.metrics, HeadMetrics) else None  # (never a lens's: _check_fit)
        layer = metrics.layer if state.kind == "probe" and metrics is not None else None
        if state.kind != "los" and layer not in states:
            states[layer] = await (
                services.store.hidden(tenant, meta) if layer is None else layer_states(services, tenant, meta, layer)
            )
        with _BLAS.limit(limits=1, user_api="blas"):
            _answer(answers, state, w, stats, states.get(layer), positions)
    return answers


async def _check_feature_models(services: Services, head_id: str, state: HeadState) -> None:
    """A stack head's other models are served as they were when it was trained (their values mean the same)."""
    for name, fingerprint in (state.feature_fingerprints or {}).items():
        card = await services.catalog.card(name, "heads")
        if card.fingerprint != fingerprint:
            raise ApiError(
                422,
                "head_model_mismatch",
                f"stack head {head_id!r} read {name!r} as it was served when the head was trained; it has been "
                "reloaded with other weights since",
                "heads",
            )


def _answer(
    answers: HeadAnswers,
    state: HeadState,
    w: dict[str, np.ndarray],
    stats: dict[str, np.ndarray],
    hidden: np.ndarray | None,
    positions: np.ndarray,
) -> None:
    """One head's score, weights and decision, added to `answers`."""
    rows = positions - 1
    weights: np.ndarray | None = None
    if state.kind == "los":
        logit, weights = los_forward(w, los_features(stats, rows, int(state.params["topk"])))
    else:
        assert hidden is not None
        if state.kind == "probe":
            pooled = hidden[rows].mean(axis=0) if state.params.get("pool", "mean") == "mean" else hidden[rows[-1]]
            logit = probe_forward(w, pooled)
        else:
            # The rows to project: those of the span and each one's next (a contiguous slice for a plain span).
            needed = np.union1d(rows, rows[rows + 1 < len(hidden)] + 1)
            contiguous = needed[-1] - needed[0] + 1 == len(needed)
            source = hidden[needed[0] : needed[-1] + 1] if contiguous else hidden[needed]
            current = np.searchsorted(needed, rows)
            following = np.where(rows + 1 < len(hidden), np.searchsorted(needed, rows + 1), -1)
            feats = pawn_features(stats, rows)
            logit, weights = pawn_forward(w, feats, source, current, following, positions)
    _add(answers, state, sigmoid(logit), weights)


def _add(answers: HeadAnswers, state: HeadState, score: float, weights: np.ndarray | None = None) -> None:
    """A head's score, its per-position weights if it has them, and its decision."""
    if state.name in answers.sequence:
        raise ApiError(422, "duplicate_head_name", f"two heads named {state.name!r} in one request", "heads")
    answers.sequence[state.name] = score
    if weights is not None:
        answers.tokens[state.name] = weights
    if isinstance(state.metrics, HeadMetrics):
        positive = score > state.metrics.threshold
        answers.decisions[state.name] = {
            "machine": positive,
            "positive": positive,
            "sign": 1.0,
            "threshold": state.metrics.threshold,
            "target_fpr": state.metrics.target_fpr,
        }
