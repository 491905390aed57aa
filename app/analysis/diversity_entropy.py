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
    pairs = series.shape[0] - embed  # neighbouring orbits (x_i .. x_i+embed-1) and (x_i+1 .. x_i+embed)
    dot = np.zeros((pairs, *series.shape[1:]))
    square_a, square_b = np.zeros_like(dot), np.zeros_like(dot)
    for k in range(embed):  # sums over the orbit's values in order, on contiguous slices
        a, b = series[k : k + pairs], series[k + 1 : k + 1 + pairs]
        dot += a * b
        square_a += a * a
        square_b += b * b
    norms = np.maximum(np.sqrt(square_a), COSINE_EPS) * np.maximum(np.sqrt(square_b), COSINE_EPS)
    cosine = dot / norms  # [T - embed, (n)]
    columns = cosine.reshape(cosine.shape[0], -1)
    # torch.histc's binning: floor((x - min) * bins / (max - min)), the top edge in the last bin
    index = np.minimum(np.floor((columns + 1.0) * bins / 2.0), bins - 1).astype(np.int64)
    inside = (columns >= -1.0) & (columns <= 1.0)
    offset = index + bins * np.arange(columns.shape[1])[None, :]  # column j counts into bins [j * bins, (j+1) * bins)
    occupied, counts = np.unique(offset[inside], return_counts=True)  # only the bins that are hit: bins ~ 10 T
    column, c = occupied // bins, counts.astype(np.float64)
    total = np.bincount(column, weights=c, minlength=columns.shape[1])
    c_log_c = np.bincount(column, weights=c * np.log(c), minlength=columns.shape[1])
    # -sum_b f_b log f_b with f_b = c_b / N is log N - sum_b c_b log c_b / N
    entropy = (np.log(total) - c_log_c / total) / np.log(bins)
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
