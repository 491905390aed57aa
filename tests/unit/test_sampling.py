"""The shared sampler (workers/sampling.py) against float64 numpy references of vLLM's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.backends.base import sample_next
from workers.contract.jobs import Sampling
from workers.sampling import filtered_logits, penalised_logits

V = 50
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0.0, 3.0, V)  # both signs, so the repetition penalty divides some and multiplies others
PROMPT = [1, 2, 3, 3, 7]
COMPLETION = [7, 7, 9, 11, 1, 7]


def _sampling(**fields: object) -> Sampling:
    return Sampling(max_tokens=1, temperature=fields.pop("temperature", 1.0), top_p=fields.pop("top_p", 1.0), **fields)  # type: ignore[arg-type]


def _reference(logits: np.ndarray, s: Sampling, prompt: list[int], completion: list[int]) -> np.ndarray:
    """vLLM: logit bias; repetition over prompt + completion; frequency * count and presence over the completion."""
    x = logits.astype(np.float64).copy()
    for token, bias in s.logit_bias.items():
        x[token] += bias
    counts = np.bincount(completion, minlength=V).astype(np.float64)
    seen = (counts > 0) | np.isin(np.arange(V), prompt)
    rep = np.where(seen, s.repetition_penalty, 1.0)
    x = np.where(x > 0, x / rep, x * rep)
    return x - s.frequency_penalty * counts - s.presence_penalty * (counts > 0)


def test_penalties_and_bias_follow_the_formula_exactly() -> None:
    s = _sampling(
        logit_bias={4: -100.0, 5: 2.5},
        repetition_penalty=1.3,
        frequency_penalty=0.7,
        presence_penalty=-0.4,
    )
    ours = penalised_logits(torch.from_numpy(LOGITS), s, PROMPT, COMPLETION).numpy()
    expected = _reference(LOGITS, s, PROMPT, COMPLETION)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    scaled = {t: LOGITS[t] / 1.3 if LOGITS[t] > 0 else LOGITS[t] * 1.3 for t in range(V)}
    assert ours[7] == pytest.approx(scaled[7] - 0.7 * 3 + 0.4, abs=1e-12)  # 3 times in the completion
    # a prompt-only token: the repetition penalty only; the frequency and presence penalties count the completion
    assert ours[2] == pytest.approx(scaled[2], abs=1e-12)
    untouched = [t for t in range(V) if t not in {*PROMPT, *COMPLETION, 4, 5}]
    np.testing.assert_array_equal(ours[untouched], LOGITS[untouched])


def test_neutral_fields_change_nothing() -> None:
    ours = penalised_logits(torch.from_numpy(LOGITS), _sampling(), PROMPT, COMPLETION).numpy()
    np.testing.assert_array_equal(ours, LOGITS)


def test_greedy_takes_the_argmax_after_bias_and_penalties() -> None:
    generator = torch.Generator().manual_seed(0)
    top = int(np.argmax(LOGITS))
    logits = torch.from_numpy(LOGITS)
    assert sample_next(logits, _sampling(temperature=0.0), generator) == top
    banned = sample_next(logits, _sampling(temperature=0.0, logit_bias={top: -100.0}), generator)
    assert banned == int(np.argsort(LOGITS)[-2])
    penalised = sample_next(logits, _sampling(temperature=0.0, presence_penalty=2.0), generator, [], [top] * 5)
    assert penalised == int(np.argmax(_reference(LOGITS, _sampling(presence_penalty=2.0), [], [top] * 5)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x[np.isfinite(x)].max())
    return e / e.sum()


def test_min_p_top_k_top_p_keep_what_vllm_keeps() -> None:
    s = _sampling(temperature=0.7, min_p=0.02, top_k=12, top_p=0.8)
    kept = np.isfinite(filtered_logits(torch.from_numpy(LOGITS), s).numpy())
    x = LOGITS / 0.7
    p = _softmax(x)
    x = np.where(p < 0.02 * p.max(), -np.inf, x)  # min_p on the tempered distribution
    kth = np.sort(x)[-12]
    x = np.where(x < kth, -np.inf, x)  # top_k
    order = np.argsort(x)  # top_p: drop the least likely tokens while their mass stays within 1 - top_p
    mass = np.cumsum(_softmax(x)[order])
    drop = order[(mass <= 1 - 0.8) & (np.arange(V) < V - 1)]
    expected = np.isfinite(x)
    expected[drop] = False
    np.testing.assert_array_equal(kept, expected)
    assert 1 <= kept.sum() <= 12


def test_draws_follow_the_filtered_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0], dtype=torch.float64)
    s = _sampling(temperature=0.8, top_k=3, seed=1)
    generator = torch.Generator().manual_seed(1)
    draws = np.bincount([sample_next(logits, s, generator) for _ in range(20000)], minlength=5) / 20000
    expected = _softmax(filtered_logits(logits, s).numpy())
    assert expected[3:].sum() == 0
    np.testing.assert_allclose(draws, expected, atol=0.015)
