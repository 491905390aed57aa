"""Trained heads evaluated in numpy (the gateway has no torch): the forward passes of `workers/heads/models.py`,
from the weights a worker stored (the modules' state dicts, float32). tests/unit/test_heads_forward.py checks them
against the torch modules and against a plain loop.

Each forward returns the head's logit for the sequence and, for the pooled kinds, the weight of each position.

A PAWN head stored before its read-out took the gate-weighted criterion has no `crit_mean` weight: it is read as it
was trained (the pooled token features alone)."""

from __future__ import annotations

import numpy as np

from workers.contract.head_features import CRITERION_COLUMNS, CRITERION_FLOOR

POSITION_SCALE = 8.0  # as in workers/heads/models.py
LOS_LOG_FLOOR = 1e-12


def _linear(w: dict[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    return x @ w[f"{name}.weight"].T.astype(np.float64) + w[f"{name}.bias"].astype(np.float64)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)  # type: ignore[no-any-return]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()  # type: ignore[no-any-return]


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x))) if x >= 0 else float(np.exp(x) / (1.0 + np.exp(x)))


def pawn_forward(
    w: dict[str, np.ndarray],
    feats: np.ndarray,
    hidden: np.ndarray,
    current: np.ndarray,
    following: np.ndarray,
    positions: np.ndarray,
) -> tuple[float, np.ndarray]:
    """feats [T, F]; hidden [R, D] raw states, each projected once (float32, as in training); current [T]: the row
    of `hidden` that predicted each position's token; following [T]: the row after it, -1 where the record ends
    (the gate saw zeros there in training); positions [T]. Returns the logit and the gate's weight per position."""
    x = (feats.astype(np.float64) - w["feat_mean"]) / w["feat_std"]
    token = np.concatenate([x, _relu(_linear(w, "f2", _relu(_linear(w, "f1", x))))], axis=1)
    mean, proj = w["hid_mean"].astype(np.float32), w["hid_proj"].astype(np.float32)
    z = np.concatenate([(hidden.astype(np.float32) - mean) @ proj, np.zeros((1, proj.shape[1]), np.float32)])
    pos = np.log1p(positions.astype(np.float64))[:, None] / POSITION_SCALE
    gate_in = np.concatenate([z[current], z[following], pos], axis=1)  # row -1 of z: the zeros
    gate = _linear(w, "g2", _relu(_linear(w, "g1", gate_in)))[:, 0]
    weights = _softmax(gate)
    pooled = weights @ token
    if "crit_mean" in w:
        pooled = np.append(pooled, (weighted_criterion(feats, weights) - w["crit_mean"][0]) / w["crit_std"][0])
    return float(_linear(w, "out", pooled)[0]), weights


def weighted_criterion(feats: np.ndarray, weights: np.ndarray) -> float:
    """Fast-DetectGPT's analytic criterion (Bao et al. 2024) under position weights w: sum w (lp + H) /
    sqrt(sum w^2 (sigma^2 + floor)); uniform weights give the paper's sum (lp + H) / sqrt(sum sigma^2) (but for
    the floor)."""
    lp, entropy, std = (feats[:, c].astype(np.float64) for c in CRITERION_COLUMNS)
    w2 = weights * weights
    return float(weights @ (lp + entropy) / np.sqrt(w2 @ (std * std + CRITERION_FLOOR)))


def los_forward(w: dict[str, np.ndarray], feats: np.ndarray) -> tuple[float, np.ndarray]:
    """feats [T, k+1] (sorted top-k probabilities and the actual token's), read beside their logarithms. The logit
    and the attention weights."""
    p = feats.astype(np.float64)
    signature = np.concatenate([p, np.log(np.maximum(p, LOS_LOG_FLOOR))], axis=1)
    x = (signature - w["feat_mean"]) / w["feat_std"]
    enc = np.concatenate([x, _relu(_linear(w, "e2", _relu(_linear(w, "e1", x))))], axis=1)
    weights = _softmax(_linear(w, "attn", enc)[:, 0])
    pooled = np.concatenate([weights @ enc, enc.mean(axis=0)])
    return float(_linear(w, "out", pooled)[0]), weights


def probe_forward(w: dict[str, np.ndarray], pooled: np.ndarray) -> float:
    """pooled [D]: the mean (or last) hidden state of the span."""
    x = (pooled.astype(np.float64) - w["mean"]) / w["std"]
    return float(_linear(w, "lin", x)[0])


def stack_forward(w: dict[str, np.ndarray], values: np.ndarray) -> float:
    """values [F]: a stack head's feature values, NaN where undefined (read as `fill`, the training mean)."""
    return probe_forward(w, np.where(np.isnan(values), w["fill"], values))
