"""Calibrated decisions for detection scores: a threshold per method fitted on labelled texts at a target
false-positive rate (human texts wrongly flagged), with the score's direction learned from the data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fit:
    sign: float  # +1: higher scores mean machine-written; -1: lower scores do
    threshold: float  # decide "machine" when sign * score > threshold
    auroc: float  # of sign * score, machine as the positive class
    tpr: float  # on the fitting texts, at the threshold
    fpr: float
    n_human: int
    n_machine: int


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half."""
    ordered = np.sort(negative)
    below = np.searchsorted(ordered, positive, side="left")  # negatives under each positive
    tied = np.searchsorted(ordered, positive, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(positive) * len(negative)))


def fit_threshold(human: np.ndarray, machine: np.ndarray, target_fpr: float) -> Fit:
    """The smallest threshold whose false-positive rate on the human texts is at most target_fpr."""
    if len(human) < 2 or len(machine) < 2:
        raise ValueError("need at least two human and two machine texts")
    area = auroc(machine, human)
    sign = 1.0 if area >= 0.5 else -1.0
    h, m = sign * human, sign * machine
    allowed = int(np.floor(target_fpr * len(h)))  # human texts that may lie above the threshold
    ordered = np.sort(h)[::-1]
    threshold = float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1] - 1.0)
    return Fit(
        sign=sign,
        threshold=threshold,
        auroc=max(area, 1.0 - area),
        tpr=float(np.mean(m > threshold)),
        fpr=float(np.mean(h > threshold)),
        n_human=len(h),
        n_machine=len(m),
    )
