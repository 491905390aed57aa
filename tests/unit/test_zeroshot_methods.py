"""Lastde, DNA-DetectLLM, ReCaLL and Con-ReCall against float64 transcriptions of their reference code on random
inputs (the references run in torch, as the papers' code does, on full distributions)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.special
import torch
import torch.nn.functional as F

from app.analysis.base import Context, Positions
from app.analysis.run import AnalysisError, resolve_params, run_methods, select_methods
from workers.capture import row_statistics
from workers.contract.records import RecordMeta

V = 500
TOL = 1e-9


def lastde_reference(lp: np.ndarray, embed_size: int = 3, epsilon: float = 10.0, tau_prime: int = 5) -> float:
    """Lastde_Detector's get_lastde with fastMDE.get_tau_multiscale_DE, in float64 (the code bins in float32)."""
    x = torch.from_numpy(lp).reshape(1, -1, 1)  # [batch, tokens, samples], as the reference's log_likelihood
    bins = int(epsilon * x.shape[1])
    entropies = []
    for tau in range(1, tau_prime + 1):
        smoothed = x.unfold(1, tau, 1).mean(dim=3)
        orbits = smoothed.unfold(1, embed_size, 1)
        cosine = F.cosine_similarity(orbits[:, :-1], orbits[:, 1:], dim=-1)
        hist = torch.histc(cosine[0, :, 0], bins=bins, min=-1, max=1)
        freq = hist / hist.sum()
        log_bins = torch.log(torch.tensor(float(bins), dtype=torch.float64))
        entropies.append(-1 / log_bins * torch.nansum(freq * freq.log()))
    return float(x.mean() / torch.std(torch.stack(entropies)))


def mean_ll(logits: np.ndarray, targets: np.ndarray) -> float:
    """-loss of a causal LM over the given targets, as the ReCaLL code reads it (HF's mean cross-entropy)."""
    return -float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)))


def dna_reference(performer: np.ndarray, observer: np.ndarray, targets: np.ndarray) -> float:
    """DNA-DetectLLM's compute_score: sum_perplexity (text loss + argmax loss) over 2 X-PPL (metrics.entropy)."""
    logits = torch.from_numpy(performer)
    ppl = F.cross_entropy(logits, torch.from_numpy(targets)) + F.cross_entropy(logits, logits.argmax(-1))
    x_ppl = F.cross_entropy(logits, F.softmax(torch.from_numpy(observer), -1))
    return float(ppl / (2 * x_ppl))


def case(seed: int, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Random logits [n, V] and targets partly sampled from them (so log p varies the way text's does)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, V)) * scale
    p = scipy.special.softmax(logits, axis=1)
    sampled = np.array([rng.choice(V, p=row) for row in p])
    targets = np.where(rng.random(n) < 0.6, sampled, rng.integers(0, V, n))
    return logits, targets


def positions_of(logits: np.ndarray, targets: np.ndarray) -> Positions:
    stats = {k: v.numpy() for k, v in row_statistics(torch.from_numpy(logits), torch.from_numpy(targets), 8).items()}
    meta = RecordMeta(
        record_id="r",
        tenant="t",
        model="m",
        fingerprint="f",
        kind="score",
        token_ids=[0, *targets.tolist()],
        storage="hidden",
        hidden_dtype="float64",
        topk=8,
        vocab_size=V,
        hidden_size=1,
    )
    return Positions.select(meta, stats, np.arange(1, len(targets) + 1))


def run(family: str, names: list[str], context: Context, params: dict[str, Any] | None = None, inputs: Any = ()) -> Any:
    methods = select_methods(family, names, frozenset(inputs))  # type: ignore[arg-type]
    return run_methods(methods, context, resolve_params(methods, params or {}))


@pytest.mark.parametrize(("seed", "n", "scale"), [(0, 60, 1.0), (1, 150, 3.0), (2, 400, 6.0)])
@pytest.mark.parametrize("params", [{}, {"embed_size": 4, "epsilon": 8.0, "tau_prime": 15}, {"epsilon": 1.0}])
def test_lastde_matches_the_reference_code(seed: int, n: int, scale: float, params: dict[str, float]) -> None:
    logits, targets = case(seed, n, scale)
    data = positions_of(logits, targets)
    value = run("detect", ["lastde"], Context(data, {}), {"lastde": params}).sequence["lastde"]
    expected = lastde_reference(data.logprob, **params)  # type: ignore[arg-type]
    assert value == pytest.approx(expected, rel=TOL, abs=TOL)
    assert np.isfinite(expected) and expected < 0


def test_lastde_is_undefined_on_a_span_too_short_for_its_scales() -> None:
    logits, targets = case(3, 7, 2.0)  # tau' + s = 8 positions at least
    result = run("detect", ["lastde"], Context(positions_of(logits, targets), {}))
    assert result.sequence["lastde"] is None
    assert "shorter than tau_prime + embed_size" in result.undefined["lastde"]
    logits, targets = case(3, 8, 2.0)
    assert run("detect", ["lastde"], Context(positions_of(logits, targets), {})).sequence["lastde"] is not None


@pytest.mark.parametrize(("seed", "scale"), [(0, 0.5), (1, 3.0), (2, 8.0)])
def test_dna_detectllm_matches_the_reference_code(seed: int, scale: float) -> None:
    performer, targets = case(seed, 120, scale)
    observer = performer * 0.7 + np.random.default_rng(seed + 9).standard_normal(performer.shape)
    data = positions_of(performer, targets)
    alone = run("detect", ["dna_detectllm"], Context(data, {})).sequence["dna_detectllm"]
    assert alone == pytest.approx(dna_reference(performer, performer, targets), rel=TOL)
    logq = torch.log_softmax(torch.from_numpy(observer), -1)
    logp = torch.log_softmax(torch.from_numpy(performer), -1)
    cross = {"q_logp_mean": (logq.exp() * logp).sum(-1).numpy()}
    paired = run("detect", ["dna_detectllm"], Context(data, {}, cross=cross), inputs={"cross"})
    assert paired.sequence["dna_detectllm"] == pytest.approx(dna_reference(performer, observer, targets), rel=TOL)
    assert paired.sequence["dna_detectllm"] != pytest.approx(alone, rel=1e-3)


@pytest.mark.parametrize(("seed", "gamma"), [(0, 0.5), (1, 0.1), (2, 1.0)])
def test_recall_and_con_recall_match_the_reference_code(seed: int, gamma: float) -> None:
    logits, targets = case(seed, 80, 3.0)
    rng = np.random.default_rng(seed + 50)
    non_member = logits + rng.standard_normal(logits.shape) * 2.0  # the text after a non-member prefix
    member = logits + rng.standard_normal(logits.shape) * 0.5
    prefixed = {"prefix": positions_of(non_member, targets), "member_prefix": positions_of(member, targets)}
    context = Context(positions_of(logits, targets), {}, prefixed=prefixed)
    result = run(
        "membership",
        ["recall", "con_recall"],
        context,
        {"con_recall": {"gamma": gamma}},
        inputs={"prefix", "member_prefix"},
    )
    ll, ll_non, ll_mem = (mean_ll(x, targets) for x in (logits, non_member, member))
    assert result.sequence["recall"] == pytest.approx(ll_non / ll, rel=TOL)
    assert result.sequence["con_recall"] == pytest.approx((ll_non - gamma * ll_mem) / ll, rel=TOL)
    assert result.sequence["recall"] > 1  # the noisier prefix lowered the likelihood


def test_prefix_methods_ask_for_their_prefix() -> None:
    with pytest.raises(AnalysisError) as missing:
        select_methods("membership", ["recall"])
    assert (missing.value.code, missing.value.param) == ("prefix_required", "prefix")
    with pytest.raises(AnalysisError) as member:
        select_methods("membership", ["con_recall"], frozenset({"prefix"}))
    assert (member.value.code, member.value.param) == ("prefix_required", "member_prefix")
    assert {m.name for m in select_methods("membership", None)}.isdisjoint({"recall", "con_recall"})
    chosen = {m.name for m in select_methods("membership", None, frozenset({"prefix", "frequencies"}))}
    assert "recall" in chosen and "con_recall" not in chosen
