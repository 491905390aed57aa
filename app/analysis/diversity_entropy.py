"""Multiscale diversity entropy of a series, as Lastde defines it (Xu et al. 2024, arXiv:2410.06072; reference
code TrustMedia-zju/Lastde_Detector, py_scripts/baselines/scoring_methods/fastMDE.py).

For each scale tau = 1..tau_max the series is smoothed by a moving average of width tau (stride 1); its orbits
(windows of `embed` consecutive values, stride 1) are compared by the cosine similarity of neighbours; those
similarities are counted into `bins` equal intervals of [-1, 1]; the diversity entropy is the Shannon entropy of
the interval frequencies over log(bins). The multiscale value is the sample standard deviation of the tau_max
entropies.
"""

from __future__ import annotations

import numpy as np

COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's floor on each norm


def shortest_series(embed: int, tau_max: int) -> int:
    """The shortest series whose coarsest scale still has two orbits to compare."""
    return tau_max + embed


def diversity_entropy(series: np.ndarray, embed: int, bins: int) -> np.ndarray:
    """DE of each column of series [T, n] (or of a series [T]): the entropy of the binned cosine similarities of
    neighbouring orbits, over log(bins)."""
    orbits = np.lib.stride_tricks.sliding_window_view(series, embed, axis=0)  # [T - embed + 1, (n,) embed]
    a, b = orbits[:-1], orbits[1:]
    norms = np.maximum(np.linalg.norm(a, axis=-1), COSINE_EPS) * np.maximum(np.linalg.norm(b, axis=-1), COSINE_EPS)
    cosine = np.sum(a * b, axis=-1) / norms  # [T - embed, (n)]
    columns = cosine.reshape(cosine.shape[0], -1)
    # torch.histc's binning: floor((x - min) * bins / (max - min)), the top edge in the last bin
    index = np.minimum(np.floor((columns + 1.0) * bins / 2.0), bins - 1).astype(np.int64)
    inside = (columns >= -1.0) & (columns <= 1.0)
    offset = index + bins * np.arange(columns.shape[1])[None, :]  # column j counts into bins [j * bins, (j+1) * bins)
    counts = np.bincount(offset[inside], minlength=bins * columns.shape[1]).reshape(columns.shape[1], bins)
    freq = counts / counts.sum(axis=1, keepdims=True)
    terms = np.where(counts > 0, freq * np.log(np.where(counts > 0, freq, 1.0)), 0.0)
    entropy = -np.sum(terms, axis=1) / np.log(bins)
    return np.asarray(entropy.reshape(cosine.shape[1:]))


def multiscale_diversity_entropy(series: np.ndarray, embed: int, bins: int, tau_max: int) -> np.ndarray:
    """Std (n - 1 in the denominator) over tau = 1..tau_max of the DE of the tau-wide moving average, of each
    column of series [T, n] (or of a series [T]); NaN when the series is shorter than `shortest_series`."""
    if series.shape[0] < shortest_series(embed, tau_max) or tau_max < 2:
        return np.full(series.shape[1:], np.nan)
    scales = [
        diversity_entropy(np.lib.stride_tricks.sliding_window_view(series, tau, axis=0).mean(axis=-1), embed, bins)
        for tau in range(1, tau_max + 1)
    ]
    return np.asarray(np.std(scales, axis=0, ddof=1))
