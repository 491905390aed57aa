"""AUROC and threshold fitting against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from app.analysis.calibration import auroc, fit_threshold


def brute_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pair_counting(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(0.5, 1, 40), 1)  # rounding makes ties
    neg = np.round(rng.normal(0.0, 1, 30), 1)
    assert auroc(pos, neg) == pytest.approx(brute_auroc(pos, neg), abs=1e-12)


@pytest.mark.parametrize(("shift", "sign"), [(2.0, 1.0), (-2.0, -1.0)])
def test_threshold_respects_the_target_fpr_and_learns_the_direction(shift: float, sign: float) -> None:
    rng = np.random.default_rng(0)
    human, machine = rng.normal(0, 1, 200), rng.normal(shift, 1, 150)
    fit = fit_threshold(human, machine, 0.05)
    assert fit.sign == sign and fit.fpr <= 0.05 and fit.auroc > 0.9
    assert fit.fpr == pytest.approx(np.mean(sign * human > fit.threshold))
    assert fit.tpr == pytest.approx(np.mean(sign * machine > fit.threshold))
    looser = fit_threshold(human, machine, 0.2)
    assert looser.tpr >= fit.tpr and looser.fpr <= 0.2
    with pytest.raises(ValueError):
        fit_threshold(human[:1], machine, 0.05)
