"""Heads without a service: the gateway's numpy forward passes against the torch modules and a plain per-position
loop (random weights, random inputs); training on synthetic records whose classes differ in one statistic (AUROC
1.0 for every kind) and on labels that carry no signal (cross-validated AUROC near 0.5: no leak across folds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.analysis.heads import los_forward, pawn_forward, probe_forward, weighted_criterion
from workers.contract.head_features import los_features, pawn_features
from workers.contract.heads import HEAD_PARAMS, head_params
from workers.heads.data import example_inputs
from workers.heads.models import Los, Pawn, Probe
from workers.heads.models import weighted_criterion as torch_criterion
from workers.heads.train import auroc, train_head

D = 16


def _randomised(model: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
        for name in ("feat_std", "std", "crit_std"):
            if hasattr(model, name):
                getattr(model, name).abs_().add_(0.5)
    model.eval()
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _reference_pawn(w: dict[str, np.ndarray], feats: np.ndarray, cur: np.ndarray, nxt: np.ndarray, pos: np.ndarray):
    """Position by position, with plain loops over the sums (an independent reading of the architecture)."""
    relu = lambda v: [max(0.0, x) for x in v]  # noqa: E731

    def lin(name: str, v: list[float]) -> list[float]:
        weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
        return [sum(weight[o, i] * v[i] for i in range(len(v))) + bias[o] for o in range(weight.shape[0])]

    tokens, gates = [], []
    for t in range(len(feats)):
        x = [(feats[t, i] - w["feat_mean"][i]) / w["feat_std"][i] for i in range(feats.shape[1])]
        tokens.append(x + relu(lin("f2", relu(lin("f1", x)))))  # the inputs ride beside the MLP
        zc = [
            sum((cur[t, d] - w["hid_mean"][d]) * w["hid_proj"][d, r] for d in range(cur.shape[1]))
            for r in range(w["hid_proj"].shape[1])
        ]
        has_next = any(nxt[t] != 0)
        zn = [
            sum((nxt[t, d] - w["hid_mean"][d]) * w["hid_proj"][d, r] for d in range(nxt.shape[1])) if has_next else 0.0
            for r in range(w["hid_proj"].shape[1])
        ]
        gates.append(lin("g2", relu(lin("g1", zc + zn + [math.log(1 + pos[t]) / 8.0])))[0])
    m = max(gates)
    e = [math.exp(g - m) for g in gates]
    weights = [v / sum(e) for v in e]
    pooled = [sum(weights[t] * tokens[t][j] for t in range(len(feats))) for j in range(len(tokens[0]))]
    if "crit_mean" in w:  # Fast-DetectGPT's criterion under the gate's weights: features 0, 1, 4 are lp, H, std
        above = sum(weights[t] * (float(feats[t, 0]) + float(feats[t, 1])) for t in range(len(feats)))
        spread = sum(weights[t] ** 2 * (float(feats[t, 4]) ** 2 + 1e-4) for t in range(len(feats)))
        pooled.append((above / math.sqrt(spread) - w["crit_mean"][0]) / w["crit_std"][0])
    return lin("out", pooled)[0], np.array(weights)


def test_pawn_forward_matches_torch_and_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    model = Pawn(8, D, 6, 10, 7)
    w = _randomised(model, 1)
    t = 23
    feats = rng.normal(size=(t, 8)).astype(np.float32)
    hidden = rng.normal(size=(t + 1, D)).astype(np.float32)
    cur, nxt = hidden[:-1], hidden[1:].copy()
    nxt[-1] = 0.0  # the record ends after the last position
    pos = np.arange(5, 5 + t)
    logit, weights = pawn_forward(w, feats, hidden, np.arange(t), np.append(np.arange(1, t), -1), pos)
    with torch.no_grad():
        zc = model.project(torch.from_numpy(cur))
        zn = model.project(torch.from_numpy(nxt))
        zn[-1] = 0.0
        mask = torch.ones(1, t, dtype=torch.bool)
        tl, tw = model(torch.from_numpy(feats)[None], zc[None], zn[None], torch.from_numpy(pos)[None], mask)
    ref_logit, ref_weights = _reference_pawn(w, feats, cur, nxt, pos)
    assert abs(logit - float(tl[0])) <= 1e-5 * max(1.0, abs(logit))
    assert np.abs(weights - tw[0].numpy()).max() <= 1e-5
    assert abs(logit - ref_logit) <= 1e-5 * max(1.0, abs(logit))
    assert np.abs(weights - ref_weights).max() <= 1e-5
    assert weights.std() > 1e-3  # the gate does weigh positions differently
    # a head stored before the read-out took the criterion (no crit_* weights, one read-out input fewer)
    old = {k: v for k, v in w.items() if not k.startswith("crit_")}
    old["out.weight"] = w["out.weight"][:, :-1]
    old_logit, old_weights = pawn_forward(old, feats, hidden, np.arange(t), np.append(np.arange(1, t), -1), pos)
    ref_old, _ = _reference_pawn(old, feats, cur, nxt, pos)
    assert abs(old_logit - ref_old) <= 1e-5 * max(1.0, abs(ref_old)) and np.array_equal(old_weights, weights)


def test_the_weighted_criterion_at_uniform_weights_is_fast_detectgpts() -> None:
    """Bao et al. 2024's analytic criterion sum (lp + H) / sqrt(sum sigma^2), in float64 from the statistics."""
    stats, _ = _synthetic(np.random.default_rng(6), 1, True, t=40)
    feats = pawn_features(stats, np.arange(40))
    lp, h = stats["logprob"].astype(np.float64), stats["entropy"].astype(np.float64)
    var = stats["logp_m2"].astype(np.float64) - h**2
    expected = (lp + h).sum() / math.sqrt(var.sum())
    for scale in (1 / 40, 1.0):  # the weights' scale cancels
        uniform = np.full(40, scale)
        assert abs(weighted_criterion(feats, uniform) - expected) <= 1e-4 * abs(expected)
        got = float(torch_criterion(torch.from_numpy(feats)[None], torch.from_numpy(uniform).float()[None])[0])
        assert abs(got - expected) <= 1e-4 * abs(expected)


def test_los_and_probe_forward_match_torch_and_a_plain_loop() -> None:
    rng = np.random.default_rng(2)
    model = Los(21, 12)
    w = _randomised(model, 3)
    feats = rng.random(size=(31, 21)).astype(np.float32)
    feats[0, 3] = 0.0  # a probability that underflowed: its logarithm is floored
    logit, weights = los_forward(w, feats)
    with torch.no_grad():
        tl, tw = model(torch.from_numpy(feats)[None], torch.ones(1, 31, dtype=torch.bool))
    assert abs(logit - float(tl[0])) <= 1e-5 * max(1.0, abs(logit))
    assert np.abs(weights - tw[0].numpy()).max() <= 1e-5
    # plain loop
    signature = [[float(p) for p in row] + [math.log(max(float(p), 1e-12)) for p in row] for row in feats]
    x = (np.array(signature) - w["feat_mean"]) / w["feat_std"]
    enc = []
    for row in x:
        h1 = [max(0.0, float(np.dot(w["e1.weight"][o], row) + w["e1.bias"][o])) for o in range(12)]
        enc.append(list(row) + [max(0.0, float(np.dot(w["e2.weight"][o], h1) + w["e2.bias"][o])) for o in range(12)])
    scores = [float(np.dot(w["attn.weight"][0], e) + w["attn.bias"][0]) for e in enc]
    ex = [math.exp(s - max(scores)) for s in scores]
    att = [v / sum(ex) for v in ex]
    width = len(enc[0])
    pooled = [sum(att[t] * enc[t][j] for t in range(31)) for j in range(width)] + [
        sum(enc[t][j] for t in range(31)) / 31 for j in range(width)
    ]
    ref = float(np.dot(w["out.weight"][0], pooled) + w["out.bias"][0])
    assert abs(logit - ref) <= 1e-5 * max(1.0, abs(ref))
    assert np.abs(weights - np.array(att)).max() <= 1e-5

    probe = Probe(D)
    pw = _randomised(probe, 4)
    v = rng.normal(size=D).astype(np.float32)
    with torch.no_grad():
        expected = float(probe(torch.from_numpy(v)[None])[0])
    ref = sum((v[d] - pw["mean"][d]) / pw["std"][d] * pw["lin.weight"][0, d] for d in range(D)) + pw["lin.bias"][0]
    assert abs(probe_forward(pw, v) - expected) <= 1e-5 and abs(probe_forward(pw, v) - ref) <= 1e-5


def _synthetic(rng: np.random.Generator, label: int, signal: bool, t: int = 48, k: int = 20):
    """A record's statistics and hidden states. With `signal`, label-1 records have tokens one nat more likely
    (pawn, los: 1.5 nats) and hidden states shifted along one direction (probe); all else is the same noise."""
    shift = 1.5 * label if signal else 0.0
    top = np.sort(rng.normal(-4.0, 1.5, size=(t, k)), axis=1)[:, ::-1].astype(np.float32)
    top[:, 0] = np.minimum(top[:, 0], -0.05)
    top = np.minimum(top, top[:, :1])
    entropy = rng.uniform(1.0, 4.0, size=t).astype(np.float32)
    stats = {
        "logprob": np.minimum(rng.normal(-3.5 + shift, 1.0, size=t), -0.01).astype(np.float32),
        "rank": rng.integers(1, 200, size=t).astype(np.int32),
        "entropy": entropy,
        "logp_m2": (entropy**2 + rng.uniform(0.5, 3.0, size=t)).astype(np.float32),
        "kurtosis": rng.normal(size=t).astype(np.float32),
        "logz": rng.normal(size=t).astype(np.float32),
        "topk_ids": np.zeros((t, k), np.int32),
        "topk_logprobs": top,
    }
    hidden = rng.normal(size=(t, D)).astype(np.float32)
    hidden[:, 3] += shift
    return stats, hidden


def _examples(kind: str, labels: np.ndarray, signal: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = head_params(kind, {"gate_dims": D // 2} if kind == "pawn" else {})  # fewer directions than D
    out = []
    for label in labels:
        stats, hidden = _synthetic(rng, int(label), signal)
        out.append(example_inputs(kind, int(label), stats, hidden, 1, len(hidden) + 1, params))
    return out, params


@pytest.mark.parametrize("kind", ["pawn", "los", "probe"])
def test_each_kind_separates_classes_that_differ_in_one_statistic(kind: str) -> None:
    labels = np.array([0, 1] * 50)
    examples, params = _examples(kind, labels, signal=True)
    trained = train_head(kind, examples, seed=7, params=params, target_fpr=0.05)
    assert trained.metrics.auroc == 1.0 and trained.metrics.auroc_pooled >= 0.99
    assert trained.metrics.folds == 5 and len(trained.metrics.auroc_folds) == 5
    assert trained.metrics.fpr <= 0.05 and trained.metrics.tpr >= 0.9
    assert trained.n_parameters > 0 and ("mean" if kind == "probe" else "feat_mean") in trained.weights


@pytest.mark.parametrize("kind", ["pawn", "los", "probe"])
def test_labels_without_signal_stay_near_chance(kind: str) -> None:
    labels = np.random.default_rng(5).permutation(np.array([0, 1] * 40))
    examples, params = _examples(kind, labels, signal=False, seed=11)
    trained = train_head(kind, examples, seed=3, params=params, target_fpr=0.1)
    assert abs(trained.metrics.auroc - 0.5) < 0.2, trained.metrics
    assert "rough" in trained.metrics.confidence or "moderate" in trained.metrics.confidence


def test_training_is_reproducible() -> None:
    labels = np.array([0, 1] * 12)
    examples, params = _examples("pawn", labels, signal=True, seed=4)
    a = train_head("pawn", examples, seed=9, params=params, target_fpr=0.1)
    b = train_head("pawn", examples, seed=9, params=params, target_fpr=0.1)
    assert a.metrics == b.metrics
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    c = train_head("pawn", examples, seed=10, params=params, target_fpr=0.1)
    assert any(not np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)


def test_features_are_the_documented_statistics() -> None:
    stats, _ = _synthetic(np.random.default_rng(1), 0, False, t=5)
    rows = np.arange(5)
    f = pawn_features(stats, rows)
    assert f.shape == (5, 8) and np.isfinite(f).all()
    np.testing.assert_allclose(f[:, 0], stats["logprob"], rtol=1e-6)
    np.testing.assert_allclose(f[:, 3], np.log(stats["rank"]), rtol=1e-6)
    std = np.sqrt(stats["logp_m2"].astype(np.float64) - stats["entropy"].astype(np.float64) ** 2)
    np.testing.assert_allclose(f[:, 5], (stats["logprob"] + stats["entropy"]) / std, rtol=1e-5)
    los = los_features(stats, rows, 20)
    assert los.shape == (5, 21) and (np.diff(los[:, :20], axis=1) <= 0).all()
    np.testing.assert_allclose(los[:, 20], np.exp(stats["logprob"]), rtol=1e-6)


def test_params_are_checked() -> None:
    assert head_params("probe", {"pool": "last"})["pool"] == "last"
    for kind, bad in [
        ("probe", {"pool": "max"}),
        ("pawn", {"lr": -1}),
        ("los", {"nope": 1}),
        ("pawn", {"folds": 1}),
        ("los", {"topk": 21}),
        ("stack", {"pool": "mean"}),  # a stack reads feature values, not states
        ("lens", {"optimizer": "lbfgs"}),
        ("lens", {"momentum": 1.0}),
        ("lens", {"steps": 2.5}),
        ("lens", {"folds": 3}),  # a tuned lens holds texts out; it does not cross-validate
    ]:
        with pytest.raises(ValueError):
            head_params(kind, bad)
    assert set(HEAD_PARAMS) == {"pawn", "los", "probe", "stack", "lens"}
    assert head_params("lens", {"optimizer": "adam", "steps": 3})["optimizer"] == "adam"
    assert auroc(np.array([1.0, 2.0]), np.array([0.0, 2.0])) == 0.625


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_stored_hidden_states_decode_and_page_in_every_storage_dtype(dtype: torch.dtype) -> None:
    """The gateway reads hidden states without torch (bfloat16 too) and pages them byte for byte."""
    from safetensors.torch import load as st_load_torch
    from safetensors.torch import save as st_save_torch

    from workers.contract.records import hidden_float32, slice_hidden

    hidden = torch.randn(9, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    blob = st_save_torch({"hidden": hidden})
    np.testing.assert_array_equal(hidden_float32(blob), hidden.float().numpy())
    page = st_load_torch(slice_hidden(blob, 2, 6))["hidden"]
    assert page.dtype == dtype and torch.equal(page, hidden[2:6])


def test_pawn_starts_at_the_zero_shot_criterion() -> None:
    """Before any gradient step the read-out ranks the examples exactly as Fast-DetectGPT does (it is the best
    zero-shot input here), with every other read-out weight zero."""
    from workers.heads.train import Inputs, _build, _fit_normalisers, _logits, _start_at_zero_shot

    labels = np.array([0, 1] * 20)
    examples, params = _examples("pawn", labels, signal=True, seed=8)
    inputs = Inputs("pawn", examples)
    model = _build("pawn", examples, params)
    idx = np.arange(len(examples))
    _fit_normalisers(model, inputs, idx, params, seed=0)
    projected = inputs.projected(model)  # type: ignore[arg-type]
    _start_at_zero_shot(model, inputs, idx, projected)  # type: ignore[arg-type]
    weight = model.out.weight.detach().numpy()[0]  # type: ignore[union-attr, operator]
    assert weight[-1] > 0 and np.count_nonzero(weight) == 1
    with torch.no_grad():
        logits = _logits(model, inputs, idx, projected).numpy()
    fdg = []
    for e in examples:  # float64 from the features: sum (lp + H) / sqrt(sum sigma^2)
        f = e.feats.astype(np.float64)
        fdg.append((f[:, 0] + f[:, 1]).sum() / math.sqrt((f[:, 4] ** 2).sum()))
    assert np.array_equal(np.argsort(logits), np.argsort(fdg))
