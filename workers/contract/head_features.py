"""The per-position features heads read (PAWN's token features, LOS-Net's output signature): the workers train
on them and the gateway evaluates trained heads on them, so both compute them here."""

from __future__ import annotations

import numpy as np

PAWN_FEATURES = (
    "logprob",  # log p(x_t), floored at -50
    "entropy",  # H_t
    "max_logprob",  # log p of the most likely token
    "log_rank",  # log rank of x_t
    "logp_std",  # sqrt(sum p (log p)^2 - H^2), the spread of log p under p
    "zscore",  # (log p(x_t) + H_t) / logp_std, Min-K%++'s token score
    "gap_to_max",  # log p(x_t) - max log p
    "margin",  # p1 - p2
)

LOGPROB_FLOOR = -50.0

# PAWN's read-out criterion (Fast-DetectGPT under the gate's weights) reads these raw token features; its
# denominator's floor per unit of sum w_t^2 (nats^2), far below any real token's variance, keeps it finite (and
# differentiable) on spans of near-certain tokens. One definition for the worker's torch forward and the gateway's.
CRITERION_COLUMNS = tuple(PAWN_FEATURES.index(name) for name in ("logprob", "entropy", "logp_std"))

CRITERION_FLOOR = 1e-4


def pawn_features(stats: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """float32 [len(rows), len(PAWN_FEATURES)]: PAWN's per-token features at record rows `rows` (position t is
    row t-1), all finite."""
    lp = np.maximum(stats["logprob"][rows].astype(np.float64), LOGPROB_FLOOR)
    entropy = stats["entropy"][rows].astype(np.float64)
    top = np.maximum(stats["topk_logprobs"][rows, :2].astype(np.float64), LOGPROB_FLOOR)
    std = np.sqrt(np.maximum(stats["logp_m2"][rows].astype(np.float64) - entropy**2, 0.0))
    z = np.clip((lp + entropy) / np.maximum(std, 1e-6), -50.0, 50.0)
    columns = [lp, entropy, top[:, 0], np.log(stats["rank"][rows].astype(np.float64)), std, z, lp - top[:, 0]]
    columns.append(np.exp(top[:, 0]) - np.exp(top[:, 1]))
    return np.stack(columns, axis=1).astype(np.float32)


def los_features(stats: dict[str, np.ndarray], rows: np.ndarray, topk: int) -> np.ndarray:
    """float32 [len(rows), topk + 1]: LOS-Net's output signature, each position's sorted top-k probabilities and
    the probability of the actual token."""
    top = np.sort(np.exp(stats["topk_logprobs"][rows, :topk].astype(np.float64)), axis=1)[:, ::-1]
    actual = np.exp(stats["logprob"][rows].astype(np.float64))[:, None]
    out: np.ndarray = np.concatenate([top, actual], axis=1).astype(np.float32)
    return out
