"""Training a head with stratified k-fold cross-validation: every example is scored once by a head that never
saw it (the metrics), then the stored head is trained on all examples. Inside each training run a stratified
validation split early-stops the networks (and picks the probe's L2 strength). Normalisers and the hidden-state
projection are fitted on each run's own training examples only, so nothing leaks across folds. Seeded."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from threadpoolctl import ThreadpoolController
from torch import nn

from workers.contract.heads import HeadMetrics
from workers.heads.data import Example
from workers.heads.models import Los, Pawn, Probe, Stack, los_inputs, n_parameters, weighted_criterion
from workers.lanes import checkpoint

PROBE_L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # tried on the validation split
PCA_SAMPLE = 10000  # hidden-state rows that fit the gate's projection
READOUT_L2 = 1e-2  # the logistic fit that starts PAWN's read-out (standardised input)
ANCHOR = 1.0  # PAWN: the pull of the read-out's weights back to their start (per squared unit, beside the loss)
Progress = Callable[[str, float], None]
_BLAS = ThreadpoolController()


@dataclass
class Trained:
    weights: dict[str, np.ndarray]
    metrics: HeadMetrics
    n_parameters: int
    training_time_s: float
    oof_scores: np.ndarray
    # a probe over C candidate layers (layer "best"): the index of the chosen one, and each one's CV AUROC
    layer_choice: int | None = None
    layer_aurocs: list[float] | None = None
    feature_auroc: list[float] | None = None  # stack: each feature alone, cross-validated on the same folds


# ---------------------------------------------------------------- metrics


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half."""
    ordered = np.sort(negative)
    below = np.searchsorted(ordered, positive, side="left")
    tied = np.searchsorted(ordered, positive, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(positive) * len(negative)))


def auroc_interval(area: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """A 95% interval from Hanley & McNeil's (1982) standard error of the AUROC."""
    q1, q2 = area / (2 - area), 2 * area * area / (1 + area)
    var = (area * (1 - area) + (n_pos - 1) * (q1 - area**2) + (n_neg - 1) * (q2 - area**2)) / (n_pos * n_neg)
    half = 1.96 * math.sqrt(max(var, 0.0))
    return max(0.0, area - half), min(1.0, area + half)


def cv_metrics(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray, target_fpr: float) -> HeadMetrics:
    pos, neg = scores[labels == 1], scores[labels == 0]
    pooled = auroc(pos, neg)
    per_fold = [
        auroc(scores[(folds == f) & (labels == 1)], scores[(folds == f) & (labels == 0)])
        for f in range(int(folds.max()) + 1)
    ]
    area = float(np.mean(per_fold))
    low, high = auroc_interval(area, len(pos), len(neg))
    ordered = np.sort(neg)[::-1]
    allowed = math.floor(target_fpr * len(ordered))  # label-0 examples that may score above the threshold
    threshold = float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1] - 1e-9)
    n_min = min(len(pos), len(neg))
    if n_min < 30:
        how = "rough"
    elif high - low > 0.1:
        how = "moderate"
    else:
        how = "good"
    spread = float(np.std(per_fold))
    confidence = (
        f"{how}: cross-validated AUROC {area:.3f} (mean over folds; 95% interval {low:.3f}-{high:.3f}, "
        f"Hanley-McNeil) from "
        f"{len(pos)} + {len(neg)} examples over {len(per_fold)} folds (fold-to-fold spread {spread:.3f}); the "
        f"threshold's false-positive rate rests on {len(neg)} label-0 examples"
        + ("; add examples for firmer figures" if how != "good" else "")
    )
    return HeadMetrics(
        folds=len(per_fold),
        auroc=area,
        auroc_folds=per_fold,
        auroc_pooled=pooled,
        auroc_ci95=(low, high),
        target_fpr=target_fpr,
        threshold=threshold,
        tpr=float(np.mean(pos > threshold)),
        fpr=float(np.mean(neg > threshold)),
        confidence=confidence,
    )


# ---------------------------------------------------------------- splits


def stratified_folds(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    folds = np.zeros(len(labels), dtype=np.int64)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        folds[idx] = np.arange(len(idx)) % k
    return folds


def validation_split(
    indices: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: at least one of each class in each part."""
    train, val = [], []
    for c in (0, 1):
        idx = rng.permutation(indices[labels[indices] == c])
        n_val = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ---------------------------------------------------------------- inputs


class Inputs:
    """All examples padded once: features, positions and mask [N, Tmax, ...]; hidden states kept flat."""

    def __init__(self, kind: str, examples: list[Example]) -> None:
        self.kind = kind
        self.labels = torch.tensor([e.label for e in examples], dtype=torch.float32)
        self.lengths = np.array([len(e.positions) for e in examples])
        if kind == "probe":
            pooled = np.stack([e.pooled for e in examples if e.pooled is not None])  # [N, D] or [N, C, D]
            self.layer_pooled = torch.from_numpy(pooled if pooled.ndim == 3 else pooled[:, None]).transpose(0, 1)
            self.pooled = self.layer_pooled[0]  # [N, D]: the candidate layer being trained on
            return
        if kind == "stack":
            self.pooled = torch.from_numpy(np.stack([e.pooled for e in examples if e.pooled is not None]))
            return
        n, t_max, f = len(examples), int(self.lengths.max()), examples[0].feats.shape[1]
        self.feats = torch.zeros(n, t_max, f)
        self.positions = torch.zeros(n, t_max, dtype=torch.int64)
        self.mask = torch.zeros(n, t_max, dtype=torch.bool)
        for i, e in enumerate(examples):
            t = len(e.positions)
            self.feats[i, :t] = torch.from_numpy(e.feats)
            self.positions[i, :t] = torch.from_numpy(e.positions)
            self.mask[i, :t] = True
        if kind == "pawn":
            self.hidden = [e.hidden for e in examples if e.hidden is not None]
            self.has_next = np.array([e.hidden is not None and bool(e.hidden[-1].any()) for e in examples])

    def uniform(self, sel: torch.Tensor) -> torch.Tensor:
        """Uniform position weights over each selected example's span [n, Tmax]."""
        m = self.mask[sel].to(torch.float32)
        return m / m.sum(dim=1, keepdim=True)

    def zero_shot(self, sel: torch.Tensor) -> torch.Tensor:
        """The Fast-DetectGPT criterion of each selected example (the gate-weighted criterion at uniform weights)."""
        return weighted_criterion(self.feats[sel], self.uniform(sel))

    def projected(self, model: Pawn) -> tuple[torch.Tensor, torch.Tensor]:
        """Current and following projected hidden states [N, Tmax, r] under the model's projection."""
        n, t_max = self.mask.shape
        r = model.hid_proj.shape[1]
        current, following = torch.zeros(n, t_max, r), torch.zeros(n, t_max, r)
        mean, proj = model.hid_mean.numpy(), model.hid_proj.numpy()
        with torch.no_grad():
            for i, h in enumerate(self.hidden):
                z = torch.from_numpy((h - mean) @ proj)
                t = len(h) - 1
                current[i, :t] = z[:t]
                following[i, : t - 1] = z[1:t]
                if self.has_next[i]:
                    following[i, t - 1] = z[t]
        return current, following


def _standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def _fit_normalisers(model: nn.Module, inputs: Inputs, idx: np.ndarray, params: dict[str, Any], seed: int) -> None:
    if isinstance(model, Stack):  # an undefined value reads as the feature's mean over the training examples
        x = inputs.pooled[idx]
        model.fill = torch.nan_to_num(torch.nanmean(x, dim=0), nan=0.0)
        model.mean, model.std = _standardiser(torch.where(torch.isnan(x), model.fill, x))
        return
    if isinstance(model, Probe):
        model.mean, model.std = _standardiser(inputs.pooled[idx])
        return
    sel = torch.from_numpy(idx)
    feats = inputs.feats[sel][inputs.mask[sel]]
    model.feat_mean, model.feat_std = _standardiser(los_inputs(feats) if isinstance(model, Los) else feats)
    if isinstance(model, Pawn):
        model.hid_mean, model.hid_proj = _principal_directions(
            [inputs.hidden[i][:-1] for i in idx], model.hid_proj.shape[1], seed
        )
        mean, std = _standardiser(inputs.zero_shot(sel))
        model.crit_mean, model.crit_std = mean.reshape(1), std.reshape(1)


def _principal_directions(hidden: list[np.ndarray], r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the hidden states and the projection onto their top r principal directions, scaled to unit
    variance along each (from a seeded sample of at most PCA_SAMPLE rows)."""
    rng = np.random.default_rng(seed)
    keep = min(1.0, PCA_SAMPLE / max(1, sum(len(h) for h in hidden)))
    rows = np.concatenate([h[rng.random(len(h)) < keep] if keep < 1.0 else h for h in hidden]).astype(np.float64)
    mean = rows.mean(axis=0)
    centred = rows - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / max(len(rows), 1))
    order = np.argsort(values)[::-1][: min(r, len(values))]
    proj = np.zeros((rows.shape[1], r))
    proj[:, : len(order)] = vectors[:, order] / np.sqrt(np.maximum(values[order], 1e-12))
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(proj.astype(np.float32))


# ---------------------------------------------------------------- one training run


def _build(kind: str, examples: list[Example], params: dict[str, Any]) -> nn.Module:
    if kind == "stack":
        return Stack(examples[0].pooled.shape[0])  # type: ignore[union-attr]
    if kind == "probe":
        pooled = examples[0].pooled
        assert pooled is not None
        return Probe(pooled.shape[-1])
    f = examples[0].feats.shape[1]
    if kind == "los":
        model: nn.Module = Los(f, int(params["width"]))
    else:
        hidden = examples[0].hidden
        assert hidden is not None
        model = Pawn(f, hidden.shape[1], int(params["gate_dims"]), int(params["width"]), int(params["gate_width"]))
    model.dropout.p = float(params["dropout"])  # type: ignore[union-attr]
    return model


def _logits(model: nn.Module, inputs: Inputs, idx: np.ndarray, projected: Any) -> torch.Tensor:
    if isinstance(model, Probe):
        return model(inputs.pooled[idx])  # type: ignore[no-any-return]
    t = int(inputs.lengths[idx].max())
    sel = torch.from_numpy(idx)
    feats, mask = inputs.feats[sel, :t], inputs.mask[sel, :t]
    if isinstance(model, Los):
        return model(feats, mask)[0]  # type: ignore[no-any-return]
    current, following = projected
    return model(feats, current[sel, :t], following[sel, :t], inputs.positions[sel, :t], mask)[0]  # type: ignore[no-any-return]


def _fit_probe(model: Probe, inputs: Inputs, train: np.ndarray, val: np.ndarray) -> None:
    loss_fn = nn.BCEWithLogitsLoss()

    def fit(idx: np.ndarray, l2: float) -> None:
        nn.init.zeros_(model.lin.weight)
        nn.init.zeros_(model.lin.bias)
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")
        y = inputs.labels[idx]

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss: torch.Tensor = loss_fn(model(inputs.pooled[idx]), y) + 0.5 * l2 * (model.lin.weight**2).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        opt.step(closure)  # type: ignore[no-untyped-call]

    best = (math.inf, PROBE_L2[-1])
    for l2 in PROBE_L2:
        checkpoint()  # a slice: one fit
        fit(train, l2)
        with torch.no_grad():
            val_loss = float(loss_fn(model(inputs.pooled[val]), inputs.labels[val]))
        best = min(best, (val_loss, l2))
    fit(np.sort(np.concatenate([train, val])), best[1])


def _readout_inputs(model: Pawn, inputs: Inputs, idx: np.ndarray, projected: Any) -> torch.Tensor:
    """What the read-out of `model` sees for the examples idx [n, F + width + 1] (no gradient)."""
    seen: list[torch.Tensor] = []
    hook = model.out.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    try:
        with torch.no_grad():
            _logits(model, inputs, idx, projected)
    finally:
        hook.remove()
    return seen[0]


def _logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An L2-regularised logistic regression (the bias free) by L-BFGS: weights [d] and bias []."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")
    loss_fn = nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss: torch.Tensor = loss_fn(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def _start_at_zero_shot(model: Pawn, inputs: Inputs, train: np.ndarray, projected: Any) -> None:
    """Start the read-out at the best zero-shot score it can express: while the gate is uniform (as it starts) its
    inputs include the Fast-DetectGPT criterion and each token feature's plain mean (the mean log-probability: the
    geometric mean probability's logarithm). The one of them with the highest training AUROC (either way round;
    the criterion wins ties) gets the weight and bias of a logistic fit on the training examples, every other
    read-out weight zero, so the head's scores rank the examples exactly as that zero-shot score does."""
    x = _readout_inputs(model, inputs, train, projected)
    y = inputs.labels[train]
    candidates = [x.shape[1] - 1, *range(model.feat_mean.shape[0])]  # the criterion first
    separation = [abs(auroc(x[y == 1, c].numpy(), x[y == 0, c].numpy()) - 0.5) for c in candidates]
    column = candidates[int(np.argmax(separation))]
    w, b = _logistic(x[:, column : column + 1], y, READOUT_L2)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.weight[0, column] = w[0]
        model.out.bias.fill_(float(b))


def _validation_score(logits: torch.Tensor, labels: torch.Tensor, by_auroc: bool) -> float:
    """Lower is better: the loss, or minus the AUROC (a thousandth of the loss breaking its many ties)."""
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, labels))
    if not by_auroc:
        return loss
    y, s = labels.numpy(), logits.numpy()
    return -auroc(s[y == 1], s[y == 0]) + 1e-3 * loss


def _fit_net(
    model: nn.Module, inputs: Inputs, train: np.ndarray, val: np.ndarray, params: dict[str, Any], seed: int
) -> None:
    """AdamW on minibatches, early-stopped on the validation split. A PAWN head starts at its zero-shot read-out
    (`_start_at_zero_shot`), keeps that start unless training ranks the validation split better (it stops on the
    validation AUROC), and its read-out weights are pulled back towards their start (ANCHOR) instead of to zero."""
    projected = None
    anchored: list[torch.Tensor] = []
    if isinstance(model, Pawn):
        projected = inputs.projected(model)
        _start_at_zero_shot(model, inputs, train, projected)
        anchored = [model.out.weight]
    pawn = bool(anchored)
    start = [p.detach().clone() for p in anchored]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in model.parameters() if all(p is not a for a in anchored)]},
        {"params": anchored, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=float(params["lr"]), weight_decay=float(params["weight_decay"]))
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    size = min(int(params["batch_size"]), max(4, len(train) // 8))  # small sets still take several steps an epoch

    def validation() -> float:
        model.eval()
        with torch.no_grad():
            return _validation_score(_logits(model, inputs, val, projected), inputs.labels[val], pawn)

    best_score, best_state, since = validation(), {k: v.clone() for k, v in model.state_dict().items()}, 0
    for _ in range(int(params["max_epochs"])):
        model.train()
        order = train[torch.randperm(len(train), generator=gen).numpy()]
        for lo in range(0, len(order), size):
            batch = order[lo : lo + size]
            opt.zero_grad()
            loss = loss_fn(_logits(model, inputs, batch, projected), inputs.labels[batch])
            for p, p0 in zip(anchored, start, strict=True):
                loss = loss + ANCHOR * ((p - p0) ** 2).sum()
            loss.backward()
            opt.step()
            checkpoint()  # a slice: one mini-batch
        score = validation()
        if score < best_score - 1e-4:
            best_score, best_state, since = score, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            since += 1
            if since >= int(params["patience"]):
                break
    model.load_state_dict(best_state)
    model.eval()


def _train_once(
    kind: str, examples: list[Example], inputs: Inputs, idx: np.ndarray, params: dict[str, Any], seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    labels = inputs.labels.numpy().astype(np.int64)
    train, val = validation_split(idx, labels, float(params["val_fraction"]), rng)
    model = _build(kind, examples, params)
    _fit_normalisers(model, inputs, train, params, seed)
    if isinstance(model, Probe):
        _fit_probe(model, inputs, train, val)
    else:
        _fit_net(model, inputs, train, val, params, seed)
    return model


def _probabilities(model: nn.Module, inputs: Inputs, idx: np.ndarray) -> np.ndarray:
    projected = inputs.projected(model) if isinstance(model, Pawn) else None
    with torch.no_grad():
        logits = _logits(model, inputs, idx, projected).double().numpy()
    return 1.0 / (1.0 + np.exp(-logits))  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the whole training


def train_head(
    kind: str,
    examples: list[Example],
    seed: int,
    params: dict[str, Any],
    target_fpr: float,
    progress: Progress | None = None,
) -> Trained:
    """Cross-validate, then train the head to keep on all examples. Scores are probabilities of label 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these networks are small: one thread runs them faster than several
    try:
        with _BLAS.limit(limits=1, user_api="blas"):  # numpy's too (its threads stall on a busy machine)
            return _train_head(kind, examples, seed, params, target_fpr, progress)
    finally:
        torch.set_num_threads(threads)


def _train_head(
    kind: str,
    examples: list[Example],
    seed: int,
    params: dict[str, Any],
    target_fpr: float,
    progress: Progress | None,
) -> Trained:
    started = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    labels = np.array([e.label for e in examples], dtype=np.int64)
    k = min(int(params["folds"]), int(np.bincount(labels, minlength=2).min()))
    if k < 2:
        raise ValueError("cross-validation needs at least two examples of each class")
    folds = stratified_folds(labels, k, np.random.default_rng(seed))
    inputs = Inputs(kind, examples)
    candidates = inputs.layer_pooled.shape[0] if kind == "probe" else 1
    runs = []  # per candidate layer: out-of-fold scores and their metrics, on the same folds
    for c in range(candidates):
        if kind == "probe":
            inputs.pooled = inputs.layer_pooled[c]
        oof = np.zeros(len(examples))
        for f in range(k):
            done = (c * k + f) / (candidates * k + 1)
            of_layer = f", layer {c + 1}/{candidates}" if candidates > 1 else ""
            report(f"cross-validation fold {f + 1}/{k}{of_layer}", done)
            test = np.flatnonzero(folds == f)
            model = _train_once(kind, examples, inputs, np.flatnonzero(folds != f), params, seed + 1 + f)
            oof[test] = _probabilities(model, inputs, test)
        runs.append((oof, cv_metrics(oof, labels, folds, target_fpr)))
    chosen = best_candidate([metrics.auroc for _, metrics in runs])
    oof, metrics = runs[chosen]
    if kind == "probe":
        inputs.pooled = inputs.layer_pooled[chosen]
    report("training the head on all examples", candidates * k / (candidates * k + 1))
    model = _train_once(kind, examples, inputs, np.arange(len(examples)), params, seed)
    alone = _each_feature_alone(examples, labels, folds, params, seed, target_fpr) if kind == "stack" else None
    weights = {name: t.detach().to(torch.float32).contiguous().numpy() for name, t in model.state_dict().items()}
    return Trained(
        weights=weights,
        metrics=metrics,
        n_parameters=n_parameters(model),
        training_time_s=time.perf_counter() - started,
        oof_scores=oof,
        layer_choice=chosen if candidates > 1 else None,
        layer_aurocs=[m.auroc for _, m in runs] if candidates > 1 else None,
        feature_auroc=alone,
    )


def best_candidate(aurocs: list[float]) -> int:
    """The candidate with the highest cross-validated AUROC (the first of equals)."""
    return int(np.argmax(aurocs))


def _each_feature_alone(
    examples: list[Example], labels: np.ndarray, folds: np.ndarray, params: dict[str, Any], seed: int, target_fpr: float
) -> list[float]:
    """A stack's baselines: for each feature, a one-feature stack cross-validated on the same folds (its AUROC,
    the mean over folds, as the head's own)."""
    out = []
    for j in range(len(examples[0].pooled)):  # type: ignore[arg-type]
        alone = [dataclasses.replace(e, pooled=e.pooled[j : j + 1]) for e in examples]  # type: ignore[index]
        inputs = Inputs("stack", alone)
        oof = np.zeros(len(alone))
        for f in range(int(folds.max()) + 1):
            test = np.flatnonzero(folds == f)
            model = _train_once("stack", alone, inputs, np.flatnonzero(folds != f), params, seed + 1 + f)
            oof[test] = _probabilities(model, inputs, test)
        out.append(cv_metrics(oof, labels, folds, target_fpr).auroc)
    return out
