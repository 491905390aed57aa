"""Per-byte statistics of next-byte distributions, in the shape of a record's (protocol.STAT_ARRAYS), and the
cross statistics of two models' next-byte distributions over the same bytes (protocol.CROSS_ARRAYS), so that the
analyses written for tokens run unchanged on bytes. Pure numpy, float64 inside."""

from __future__ import annotations

import numpy as np

from workers.contract.names import CAPTURE_TOPK

LOG_FLOOR = -700.0  # a byte no tokenization reaches has probability 0: its log is floored (exp underflows here)


def _floored(logdist: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.maximum(logdist, LOG_FLOOR)
    return out


def byte_stats(logdist: np.ndarray, text: bytes, topk: int = CAPTURE_TOPK) -> dict[str, np.ndarray]:
    """STAT_ARRAYS for byte m predicted by logdist[m] (log-probabilities over the 256 bytes)."""
    lp = _floored(logdist)
    p = np.exp(logdist)
    observed = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    chosen = lp[np.arange(len(observed)), observed]
    mean_p = 1.0 / 256
    centred = p - mean_p
    var = (centred**2).mean(axis=1)
    kurtosis = np.where(var > 0, (centred**4).mean(axis=1) / np.where(var > 0, var, 1.0) ** 2 - 3.0, -3.0)
    order = np.argsort(-lp, axis=1, kind="stable")[:, :topk]
    return {
        "logprob": logdist[np.arange(len(observed)), observed].astype(np.float32),
        "rank": (1 + (lp > chosen[:, None]).sum(axis=1)).astype(np.int32),
        "entropy": (-(p * lp).sum(axis=1)).astype(np.float32),
        "logp_m2": (p * lp**2).sum(axis=1).astype(np.float32),
        "kurtosis": kurtosis.astype(np.float32),
        "logz": np.zeros(len(observed), dtype=np.float32),
        "topk_ids": order.astype(np.int32),
        "topk_logprobs": np.take_along_axis(logdist, order, axis=1).astype(np.float32),
    }


def byte_cross(logp: np.ndarray, logq: np.ndarray) -> dict[str, np.ndarray]:
    """CROSS_ARRAYS between p's and q's next-byte distributions [n, 256] at the same bytes."""
    lp, lq = _floored(logp), _floored(logq)
    p, q = np.exp(logp), np.exp(logq)
    log_m = np.log(np.maximum((p + q) / 2, np.exp(LOG_FLOOR)))
    p_top, q_top = lp.argmax(axis=1)[:, None], lq.argmax(axis=1)[:, None]
    return {
        "kl_pq": (p * (lp - lq)).sum(axis=1),
        "kl_qp": (q * (lq - lp)).sum(axis=1),
        "js": 0.5 * ((p * (lp - log_m)).sum(axis=1) + (q * (lq - log_m)).sum(axis=1)),
        "q_logp_mean": (q * lp).sum(axis=1),
        "q_logp_m2": (q * lp**2).sum(axis=1),
        "p_logq_mean": (p * lq).sum(axis=1),
        "p_logq_m2": (p * lq**2).sum(axis=1),
        "rank_ptop_in_q": ((lq > np.take_along_axis(lq, p_top, 1)).sum(axis=1) + 1).astype(np.float64),
        "rank_qtop_in_p": ((lp > np.take_along_axis(lp, q_top, 1)).sum(axis=1) + 1).astype(np.float64),
    }
