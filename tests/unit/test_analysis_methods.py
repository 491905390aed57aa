"""Every analysis method against an independent float64 reference computed from full distributions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from app.analysis import REGISTRY
from app.analysis.base import Context, Positions
from app.analysis.run import resolve_params, run_methods, select_methods
from tests.unit.test_zeroshot_methods import lastde_reference
from workers.capture import cross_statistics, row_statistics
from workers.contract.records import RecordMeta

V = 3000
TOL = 1e-6


def make_case(
    seed: int, n_tokens: int = 97, scale: float = 3.0
) -> tuple[RecordMeta, dict[str, np.ndarray], np.ndarray]:
    """Random logits for positions 1..T-1, tokens partly sampled from them (so ranks vary), their statistics
    computed the way the worker computes them (in float64 here), and the full log-probability rows."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n_tokens - 1, V)) * scale
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    sampled = np.array([rng.choice(V, p=np.exp(row)) for row in logp])
    uniform = rng.integers(0, V, n_tokens - 1)
    targets = np.where(rng.random(n_tokens - 1) < 0.7, sampled, uniform)
    targets[10:20] = targets[:10]  # repeated tokens, for DC-PDD's first-occurrence rule
    token_ids = np.concatenate([[int(rng.integers(0, V))], targets])
    stats = {k: v.numpy() for k, v in row_statistics(torch.from_numpy(logits), torch.from_numpy(targets), 20).items()}
    meta = RecordMeta(
        record_id="r",
        tenant="t",
        model="m",
        fingerprint="f",
        kind="score",
        token_ids=token_ids.tolist(),
        storage="hidden",
        hidden_dtype="float64",
        topk=20,
        vocab_size=V,
        hidden_size=1,
    )
    return meta, stats, logp


def reference(logp: np.ndarray, token_ids: np.ndarray, positions: np.ndarray, freq: np.ndarray) -> dict[str, object]:
    rows = logp[positions - 1]
    x = token_ids[positions]
    p = np.exp(rows)
    lp = rows[np.arange(len(x)), x]
    rank = np.array([1 + np.count_nonzero(row > row[t]) for row, t in zip(rows, x, strict=True)])
    ent = scipy.stats.entropy(p, axis=1)
    probs_sorted = -np.sort(-p, axis=1)
    mu = (p * rows).sum(axis=1)
    var = (p * rows**2).sum(axis=1) - mu**2
    n = len(x)
    k = int(n * 0.2)
    blocks = [ent[i : i + 8].mean() for i in range(0, n, 8)]
    seen: list[int] = []
    firsts = []
    for i, t in enumerate(x):
        if t not in seen:
            seen.append(int(t))
            firsts.append(i)
    ce = np.exp(lp[firsts]) * np.log(1 / freq[x[firsts]])
    ce[ce > 0.01] = 0.01
    return {
        "logprob": lp,
        "rank": rank,
        "entropy": ent,
        "margin": probs_sorted[:, 0] - probs_sorted[:, 1],
        "kurtosis": scipy.stats.kurtosis(p, axis=1, fisher=True),
        "geometric_mean_prob": np.exp(lp.mean()),
        "arithmetic_mean_prob": np.exp(lp).mean(),
        "mean_kurtosis": scipy.stats.kurtosis(p, axis=1).mean(),
        "perplexity": np.exp(-lp.mean()),
        "mean_entropy": ent.mean(),
        "max_entropy": ent.max(),
        "entropy_trend.slope": scipy.stats.linregress(np.arange(len(blocks)), blocks).slope,
        "log_likelihood": lp.mean(),
        "log_rank": -np.log(rank).mean(),
        "lrr": -lp.sum() / np.log(rank).sum(),
        "gltr.top10": np.mean(rank <= 10),
        "gltr.top100": np.mean((rank > 10) & (rank <= 100)),
        "gltr.top1000": np.mean((rank > 100) & (rank <= 1000)),
        "gltr.rest": np.mean(rank > 1000),
        "fast_detectgpt": (lp.sum() - mu.sum()) / np.sqrt(var.sum()),
        "lastde": lastde_reference(lp),
        "dna_detectllm": (-lp.mean() - rows.max(axis=1).mean()) / (2 * ent.mean()),
        "min_k": np.sort(lp)[:k].mean(),
        "min_k_zscore": (lp - mu) / np.sqrt(var),
        "min_k_plus_plus": np.sort((lp - mu) / np.sqrt(var))[:k].mean(),
        "dc_pdd": ce.mean(),
    }


@pytest.mark.parametrize("family", ["uncertainty", "detect", "membership"])
@pytest.mark.parametrize(("seed", "scale"), [(0, 0.5), (1, 3.0), (2, 8.0)])
def test_methods_match_float64_references(family: str, seed: int, scale: float) -> None:
    meta, stats, logp = make_case(seed, scale=scale)
    freq = np.random.default_rng(seed).dirichlet(np.ones(V))
    positions = np.arange(3, len(meta.token_ids))  # a span that skips the first positions
    methods = select_methods(family, None)  # type: ignore[arg-type]
    params = resolve_params(methods, {"entropy_trend": {"block_size": 8}} if family == "uncertainty" else {})
    result = run_methods(methods, Context(Positions.select(meta, stats, positions), {}, freq), params)
    ref = reference(logp, np.asarray(meta.token_ids), positions, freq)
    for name, values in result.tokens.items():
        np.testing.assert_allclose(values, ref[name], rtol=TOL, atol=TOL, err_msg=name)  # type: ignore[arg-type]
    for name, value in result.sequence.items():
        assert value == pytest.approx(ref[name], rel=TOL, abs=TOL), name
    assert set(result.tokens) | set(result.sequence) <= set(ref)


def pair_reference(
    logp: np.ndarray, logq: np.ndarray, x: np.ndarray, turns: list[tuple[int, int]]
) -> dict[str, object]:
    """Two-distribution methods straight from the definitions: p is the model under study, q the reference."""
    p, q = np.exp(logp), np.exp(logq)
    lp_x = logp[np.arange(len(x)), x]
    m = (p + q) / 2
    kl_pq = (p * (logp - logq)).sum(axis=1)
    js = 0.5 * (p * np.log(p / m)).sum(axis=1) + 0.5 * (q * np.log(q / m)).sum(axis=1)
    shift = np.array([1 + np.count_nonzero(lq > lq[np.argmax(lp)]) for lp, lq in zip(logp, logq, strict=True)])
    mu = (q * logp).sum(axis=1)
    var = (q * logp**2).sum(axis=1) - mu**2
    gain = scipy.stats.entropy(q, axis=1) - scipy.stats.entropy(p, axis=1)
    return {
        "kl": kl_pq,
        "reverse_kl": (q * (logq - logp)).sum(axis=1),
        "js": js,
        "mean_kl": kl_pq.mean(),
        "mean_js": js.mean(),
        "shift_rank": shift,
        "urial_shift.unshifted": np.mean(shift == 1),
        "urial_shift.marginal": np.mean((shift == 2) | (shift == 3)),
        "urial_shift.shifted": np.mean(shift > 3),
        "confidence_gain": gain,
        "mean_confidence_gain": gain.mean(),
        "drift.mean": np.mean([kl_pq[a:b].mean() for a, b in turns]),
        "fast_detectgpt": (lp_x.sum() - mu.sum()) / np.sqrt(var.sum()),
        "binoculars": -lp_x.mean() / -mu.mean(),
        "dna_detectllm": (-lp_x.mean() - logp.max(axis=1).mean()) / (2 * -mu.mean()),
    }


@pytest.mark.parametrize(("seed", "scale_q"), [(0, 0.7), (1, 3.0), (2, 6.0)])
def test_two_distribution_methods_match_float64_references(seed: int, scale_q: float) -> None:
    meta, stats_p, logp = make_case(seed, scale=3.0)
    rng = np.random.default_rng(seed + 1000)
    logits_q = logp * (scale_q / 3.0) + rng.standard_normal(logp.shape) * 0.5  # correlated with p: every shift class
    logq = logits_q - scipy.special.logsumexp(logits_q, axis=1, keepdims=True)
    stats_q = {
        k: v.numpy()
        for k, v in row_statistics(torch.from_numpy(logq.copy()), torch.tensor(meta.token_ids[1:]), 20).items()
    }
    positions = np.arange(2, len(meta.token_ids))
    rows = positions - 1
    cross = cross_statistics(torch.from_numpy(logp[rows]), torch.from_numpy(logq[rows]))
    turns = [(0, 30), (30, 31), (31, len(positions))]
    context = Context(
        Positions.select(meta, stats_p, positions),
        {},
        reference=Positions.select(meta, stats_q, positions),
        cross=cross,
        turns=turns,
    )
    inputs = frozenset({"cross", "reference", "turns", "frequencies"})
    ref = pair_reference(logp[rows], logq[rows], np.asarray(meta.token_ids)[positions], turns)
    for family, names in (("compare", None), ("detect", ["fast_detectgpt", "binoculars", "dna_detectllm"])):
        methods = select_methods(family, names, inputs)  # type: ignore[arg-type]
        result = run_methods(methods, context, resolve_params(methods, {}))
        for name, values in result.tokens.items():
            np.testing.assert_allclose(values, ref[name], rtol=TOL, atol=TOL, err_msg=name)  # type: ignore[arg-type]
        for name, value in result.sequence.items():
            assert value == pytest.approx(ref[name], rel=TOL, abs=TOL), name
    assert 0 < ref["urial_shift.unshifted"] < 1  # type: ignore[operator]


def test_every_method_is_covered_and_documented() -> None:
    meta, _stats, logp = make_case(5)
    for m in REGISTRY.methods.values():
        assert m.description and m.higher_means and m.families, m.name
    x = np.asarray(meta.token_ids)
    names = set(reference(logp, x, np.arange(1, 40), np.full(V, 1 / V)))
    names |= set(pair_reference(logp, logp, x[1:], [(0, 1)]))
    prefixed = {"recall", "con_recall"}  # tests/unit/test_zeroshot_methods.py
    prefixed |= {"lastde_plusplus"}  # over token samples: tests/unit/test_lastde_plusplus.py
    over_samples = {m.name for m in REGISTRY.family("consistency")}  # tests/unit/test_consistency_methods.py
    known = {name.split(".")[0] for name in names} | {"entropy_trend"} | prefixed
    assert set(REGISTRY.methods) - over_samples <= known


def test_parameters_are_checked() -> None:
    methods = select_methods("membership", ["min_k"])
    assert resolve_params(methods, {"min_k": {"k": 0.5}}) == {"min_k": {"k": 0.5}}
    for bad in ({"min_k": {"k": 2.0}}, {"min_k": {"q": 0.1}}, {"dc_pdd": {"a": 1.0}}):
        with pytest.raises(ValueError):
            resolve_params(methods, bad)
    with pytest.raises(ValueError, match="unknown"):
        select_methods("detect", ["min_k"])


def test_finite_values_or_none_is_finite_or_none_on_every_value() -> None:
    from app.analysis.run import finite_or_none, finite_values_or_none

    values = np.array([0.5, np.nan, -np.inf, 3.0, np.inf, -1e308, 0.0])
    assert finite_values_or_none(values) == [finite_or_none(v) for v in values.tolist()]
    assert finite_values_or_none(values) == [0.5, None, None, 3.0, None, -1e308, 0.0]
