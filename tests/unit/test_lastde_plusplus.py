"""Lastde++ (Xu et al. 2025, arXiv:2410.06072) against a float64 transcription of its reference code
(TrustMedia-zju/Lastde_Detector, py_scripts/baselines/lastde_doubleplus.py: get_sampling_discrepancy with
fastMDE.get_tau_multiscale_DE over all samples at once) on random distributions, and the worker's draws against
the inverse-CDF rule they document."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.special
import torch
import torch.nn.functional as F

from app.analysis.base import Context
from app.analysis.run import AnalysisError, select_methods
from app.platform.errors import ApiError
from app.serving.stack import check_features
from logprobe.schemas.heads import StackFeature
from tests.unit.test_zeroshot_methods import case, positions_of, run
from workers.token_samples import sample_logprobs

TOL = 1e-9


def mde_reference(x: torch.Tensor, embed_size: int, epsilon: int, tau_prime: int) -> torch.Tensor:
    """fastMDE.get_tau_multiscale_DE on ori_data [1, tokens, samples], histograms per sample by vmap (float64)."""

    def histcounts(data: torch.Tensor) -> torch.Tensor:
        hist = torch.histc(data, bins=epsilon, min=-1, max=1)
        return hist / torch.sum(hist)

    values = []
    for tau in range(1, tau_prime + 1):
        smoothed = torch.mean(x.unfold(1, tau, 1), dim=3)
        orbits = smoothed.unfold(1, embed_size, 1)
        cosine = F.cosine_similarity(orbits[:, :-1], orbits[:, 1:], dim=-1)  # [1, tokens', samples]
        freq = torch.stack([histcounts(cosine[..., j]) for j in range(cosine.shape[-1])], dim=1)
        log_bins = torch.log(torch.tensor(float(epsilon), dtype=torch.float64))
        values.append(-1 / log_bins * torch.nansum(freq * torch.log(freq), dim=0))
    return torch.std(torch.stack(values, dim=0), dim=0)


def lastde_reference(ll: torch.Tensor, embed_size: int, epsilon: float, tau_prime: int) -> torch.Tensor:
    """get_lastde: mean log-likelihood over the MDE, per sample of ll [1, tokens, samples]."""
    return ll.mean(dim=1) / mde_reference(ll, embed_size, int(epsilon * ll.shape[1]), tau_prime)


def lastde_plusplus_reference(
    logits: np.ndarray,
    targets: np.ndarray,
    samples: np.ndarray,
    embed_size: int = 4,
    epsilon: float = 8.0,
    tau_prime: int = 15,
) -> float:
    """get_sampling_discrepancy with the scorer as its own reference, given the drawn samples [tokens, n]."""
    lprobs = torch.log_softmax(torch.from_numpy(logits).double(), dim=-1)[None]
    ll_x = lprobs.gather(-1, torch.from_numpy(targets)[None, :, None])
    ll_tilde = lprobs.gather(-1, torch.from_numpy(samples)[None])
    text = lastde_reference(ll_x, embed_size, epsilon, tau_prime)
    sampled = lastde_reference(ll_tilde, embed_size, epsilon, tau_prime)
    return float((text - sampled.mean()) / sampled.std())


def draws(logp: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The documented rule, one draw at a time: the first v with cumsum p(v) > u * sum p, u from default_rng(seed)."""
    uniforms = np.random.default_rng(seed).random((logp.shape[0], n))
    cdf = np.cumsum(np.exp(logp), axis=1)
    out = np.empty((logp.shape[0], n), dtype=np.int64)
    for t in range(logp.shape[0]):
        for j in range(n):
            out[t, j] = min(np.searchsorted(cdf[t], uniforms[t, j] * cdf[t, -1], side="right"), logp.shape[1] - 1)
    return out


@pytest.mark.parametrize(("seed", "n", "scale", "k"), [(0, 40, 1.0, 10), (1, 120, 3.0, 25), (2, 300, 6.0, 7)])
@pytest.mark.parametrize("params", [{}, {"embed_size": 3, "epsilon": 10.0, "tau_prime": 5}])
def test_lastde_plusplus_matches_the_reference_code(
    seed: int, n: int, scale: float, k: int, params: dict[str, Any]
) -> None:
    logits, targets = case(seed, n, scale)
    logp = scipy.special.log_softmax(logits, axis=1)
    samples = draws(logp, k, seed + 100)
    ids, sampled = sample_logprobs(logp, np.random.default_rng(seed + 100).random((n, k)))
    np.testing.assert_array_equal(ids, samples)
    context = Context(positions_of(logits, targets), {}, token_samples=sampled)
    value = run("detect", ["lastde_plusplus"], context, {"lastde_plusplus": params}, ["token_samples"])
    expected = lastde_plusplus_reference(logits, targets, samples, **params)
    assert np.isfinite(expected)
    assert value.sequence["lastde_plusplus"] == pytest.approx(expected, rel=TOL, abs=TOL)


def test_the_draws_follow_the_distribution() -> None:
    """Draws from one known row: each token's share within 4 standard errors of its probability."""
    p = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
    logp = np.log(np.where(p > 0, p, 1e-300))[None, :]
    ids, sampled = sample_logprobs(logp, np.random.default_rng(3).random((1, 20_000)))
    shares = np.bincount(ids[0], minlength=5) / ids.size
    assert np.all(np.abs(shares - p) <= 4 * np.sqrt(p * (1 - p) / ids.size) + 1e-12)
    assert shares[4] == 0.0
    np.testing.assert_array_equal(sampled[0], logp[0, ids[0]])


def test_undefined_when_the_span_is_too_short_or_the_samples_do_not_vary() -> None:
    logits, targets = case(4, 18, 2.0)  # tau' + s = 19 positions at least with the defaults
    logp = scipy.special.log_softmax(logits, axis=1)
    _, sampled = sample_logprobs(logp, np.random.default_rng(0).random((18, 10)))
    result = run(
        "detect",
        ["lastde_plusplus"],
        Context(positions_of(logits, targets), {}, token_samples=sampled),
        {},
        ["token_samples"],
    )
    assert result.sequence["lastde_plusplus"] is None
    assert "shorter than tau_prime + embed_size" in result.undefined["lastde_plusplus"]
    logits, targets = case(4, 60, 2.0)
    same = np.tile(scipy.special.log_softmax(logits, axis=1)[np.arange(60), targets][:, None], (1, 5))
    result = run(
        "detect",
        ["lastde_plusplus"],
        Context(positions_of(logits, targets), {}, token_samples=same),
        {},
        ["token_samples"],
    )
    assert result.sequence["lastde_plusplus"] is None  # five identical samples: no spread to standardise by


def test_lastde_plusplus_is_named_only_and_samples_the_scorer_itself() -> None:
    inputs = frozenset({"frequencies", "token_samples"})
    assert "lastde_plusplus" not in [m.name for m in select_methods("detect", None, inputs)]
    assert [m.name for m in select_methods("detect", ["lastde_plusplus"], inputs)] == ["lastde_plusplus"]
    with pytest.raises(AnalysisError) as refused:
        select_methods("detect", ["lastde_plusplus"], frozenset({"frequencies", "cross", "reference"}))
    assert (refused.value.code, refused.value.param) == ("invalid_request", "reference_model")


def test_lastde_plusplus_is_a_stack_feature_with_its_count_and_seed() -> None:
    feature = StackFeature(method="lastde_plusplus", params={"n_samples": 20, "seed": 3})
    (stored,) = check_features([feature], "m")
    assert (stored["family"], stored["value"], stored["params"]) == ("detect", "lastde_plusplus", feature.params)
    for bad, param in [
        (StackFeature(method="lastde_plusplus", params={"n_samples": 1001}), "features.0.params"),
        (StackFeature(method="lastde_plusplus", reference_model="other"), "features.0.reference_model"),
    ]:
        with pytest.raises(ApiError) as refused:
            check_features([bad], "m")
        assert (refused.value.status, refused.value.code, refused.value.param) == (422, "invalid_features", param)
