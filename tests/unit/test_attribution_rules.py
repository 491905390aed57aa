"""The attribution and selective-contrast rules on synthetic inputs, against independent numpy recomputations:
one ReAGent round (the paper's update rule), occlusion's drops, and USCD's step and default threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch

from app.serving.contrast import uscd_rule
from logprobe.schemas.decode import Preset
from workers.attribution import occlusion, reagent
from workers.contract.jobs import ReagentParams, Selective
from workers.decoding import selective

IDS = [5, 6, 7, 8, 9, 10, 11]  # target: token 6 (11), decided by token 3 (8)


def scorer(sequences: list[list[int]], targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """p(target) = 0.9 when token 8 is in the context, else 0.01 (rank 1 and 50)."""
    present = np.array([8 in s for s in sequences])
    return np.log(np.where(present, 0.9, 0.01)), np.where(present, 1, 50)


def test_one_reagent_round_follows_the_update_rule() -> None:
    params = ReagentParams(num_probes=1, replacing_ratio=0.5, keep_top_n=1, stop_top_k=1)
    swaps = [-1, 0, 1, 2, 3, 4, 5]
    (target,) = reagent(IDS, [6], swaps, params, seed=11, max_passes=3, score=scorer)
    rng = np.random.default_rng([11, 6])
    s = rng.random((1, 5))[0]  # tokens 1..5 are free
    replaced = rng.random(5) < 0.5
    delta = 0.9 - (0.01 if replaced[2] else 0.9)
    d = np.where(replaced, delta, -delta)
    s += scipy.special.logit(np.clip(d / 2 + 0.5, 1e-6, 1 - 1e-6))
    expected = np.concatenate([[0.0], scipy.special.softmax(s)])
    np.testing.assert_allclose(target.importance, expected, rtol=1e-12)
    assert target.passes == 3 and target.converged == bool(np.argmax(s) == 2)


def test_occlusion_is_the_drop_when_each_token_is_left_out() -> None:
    (target,) = occlusion(IDS, [6], scorer)
    np.testing.assert_allclose(target.importance, [0, 0, 0, 0.89, 0, 0], atol=1e-12)
    assert target.passes == 7 and target.logprob == pytest.approx(math.log(0.9))


def test_uscd_step_contrasts_probabilities_only_where_uncertain() -> None:
    rng = np.random.default_rng(0)
    standard, lame = (torch.log_softmax(torch.from_numpy(rng.normal(size=50)), -1) for _ in range(2))
    p, q = standard.exp().numpy(), lame.exp().numpy()
    rule = Selective(measure="std", threshold=float(p.std(ddof=1)) + 1e-9, min_ratio=2 / 3)
    combined, contrasted = selective([standard, lame], [1.0, -0.7], rule)
    keep = (p >= (2 / 3) * p.mean()) & (p - 0.7 * q > 0)
    expected = np.where(keep, np.log(np.where(keep, p - 0.7 * q, 1.0)), -np.inf)
    assert contrasted
    np.testing.assert_allclose(combined.numpy(), expected - scipy.special.logsumexp(expected[keep]), atol=1e-12)
    confident = Selective(measure="std", threshold=float(p.std(ddof=1)) - 1e-9, min_ratio=2 / 3)
    combined, contrasted = selective([standard, lame], [1.0, -0.7], confident)
    assert not contrasted and torch.equal(combined, standard)


def test_uscd_default_threshold_keeps_the_papers_collision_probability() -> None:
    preset = Preset(name="uscd", model="m", lame_prompt="x")
    assert uscd_rule(preset, 32016).threshold == pytest.approx(0.005)
    threshold = uscd_rule(preset, 49152).threshold
    assert threshold == pytest.approx(0.004035, abs=1e-6)
    assert threshold**2 * (49152 - 1) + 1 / 49152 == pytest.approx(0.005**2 * 32015 + 1 / 32016)
