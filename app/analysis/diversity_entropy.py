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


def diversity_entropy(series: np.ndarray, embed: int, bins: int) -> float:
    """DE of one series: entropy of the binned cosine similarities of neighbouring orbits, over log(bins)."""
    orbits = np.lib.stride_tricks.sliding_window_view(series, embed)
    a, b = orbits[:-1], orbits[1:]
    norms = np.maximum(np.linalg.norm(a, axis=1), COSINE_EPS) * np.maximum(np.linalg.norm(b, axis=1), COSINE_EPS)
    cosine = np.sum(a * b, axis=1) / norms
    # torch.histc's binning: floor((x - min) * bins / (max - min)), the top edge in the last bin
    index = np.minimum(np.floor((cosine + 1.0) * bins / 2.0), bins - 1).astype(np.int64)
    counts = np.bincount(index[(cosine >= -1.0) & (cosine <= 1.0)], minlength=bins)
    freq = counts[counts > 0] / counts.sum()
    return float(-np.sum(freq * np.log(freq)) / np.log(bins))


def multiscale_diversity_entropy(series: np.ndarray, embed: int, bins: int, tau_max: int) -> float:
    """Std (n - 1 in the denominator) over tau = 1..tau_max of the DE of the tau-wide moving average; NaN when the
    series is shorter than `shortest_series`."""
    if series.size < shortest_series(embed, tau_max):
        return float("nan")
    scales = [
        diversity_entropy(np.lib.stride_tricks.sliding_window_view(series, tau).mean(axis=1), embed, bins)
        for tau in range(1, tau_max + 1)
    ]
    return float(np.std(scales, ddof=1)) if tau_max > 1 else float("nan")
