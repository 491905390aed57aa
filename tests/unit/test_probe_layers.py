"""Probes on any layer (issue #32): params.layer is an index, "final" or "best"; with "best" the probe is trained on
every layer's states and keeps the one with the highest cross-validated AUROC. Synthetic records whose labels a
middle layer separates well and the final layer barely: "best" picks the middle layer, which an independent
cross-validation (scikit-learn's logistic regression on the same pooled states) ranks first too; each candidate's
reported AUROC is what a probe trained on that layer alone reports."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from workers.contract.heads import head_params, probe_layers
from workers.heads.data import example_inputs
from workers.heads.job import with_layer
from workers.heads.train import train_head

D, LAYERS, MIDDLE = 12, 5, 2  # hidden_states 0..4: the embeddings, three layers, the final states
SHIFT = {0: 0.0, 1: 0.3, 2: 1.2, 3: 0.5, 4: 0.15}  # how far label 1 moves dimension 0, per layer


def _record(rng: np.random.Generator, label: int, positions: int = 6) -> np.ndarray:
    """One record's states of every layer [LAYERS, positions, D]."""
    states = rng.normal(size=(LAYERS, positions, D)).astype(np.float32)
    for layer, shift in SHIFT.items():
        states[layer, :, 0] += shift * label
    return states


def _examples(params: dict[str, float | int | str], n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.array([0, 1] * (n // 2)))
    records = [_record(rng, int(label)) for label in labels]
    stats = {"logprob": np.zeros(6, np.float32)}  # a probe reads states only
    layer = params["layer"]
    examples = []
    for states in records:
        chosen = states if layer == "best" else states[probe_layers(layer, LAYERS - 1)[0]]
        examples.append(example_inputs("probe", int(labels[len(examples)]), stats, chosen, 1, 7, params))
    return examples, labels, records


def _independent_cv_auroc(pooled: np.ndarray, labels: np.ndarray) -> float:
    """5-fold cross-validated AUROC of scikit-learn's L2 logistic regression on standardised pooled states."""
    scores = np.zeros(len(labels))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(pooled, labels):
        mean, std = pooled[train].mean(axis=0), pooled[train].std(axis=0)
        fit = LogisticRegression(C=1.0).fit((pooled[train] - mean) / std, labels[train])
        scores[test] = fit.decision_function((pooled[test] - mean) / std)
    return float(roc_auc_score(labels, scores))


def test_best_picks_the_layer_that_cross_validation_ranks_first() -> None:
    params = head_params("probe", {"layer": "best"})
    examples, labels, records = _examples(params)
    assert examples[0].pooled is not None and examples[0].pooled.shape == (LAYERS, D)
    np.testing.assert_allclose(examples[0].pooled, records[0].mean(axis=1), rtol=1e-6)
    trained = train_head("probe", examples, seed=3, params=params, target_fpr=0.1)
    assert trained.layer_choice == MIDDLE and trained.layer_aurocs is not None
    assert trained.layer_aurocs[MIDDLE] == max(trained.layer_aurocs)
    assert trained.layer_aurocs[MIDDLE] > 0.95 > 0.75 > trained.layer_aurocs[LAYERS - 1]  # the final one barely
    independent = [_independent_cv_auroc(np.stack([r[c].mean(axis=0) for r in records]), labels) for c in range(LAYERS)]
    assert int(np.argmax(independent)) == MIDDLE
    np.testing.assert_allclose(trained.layer_aurocs, independent, atol=0.08)  # other folds, other L2: close
    metrics = with_layer(trained, params)
    assert metrics.layer == MIDDLE and metrics.layer_auroc == dict(enumerate(trained.layer_aurocs))
    assert metrics.auroc == trained.layer_aurocs[MIDDLE] and "optimistic" in metrics.confidence


@pytest.mark.parametrize("layer", [MIDDLE, LAYERS - 1])
def test_each_candidates_auroc_is_the_probe_of_that_layer_alone(layer: int) -> None:
    every = head_params("probe", {"layer": "best"})
    best = train_head("probe", _examples(every)[0], seed=3, params=every, target_fpr=0.1)
    params = head_params("probe", {"layer": layer})
    alone = train_head("probe", _examples(params)[0], seed=3, params=params, target_fpr=0.1)
    assert best.layer_aurocs is not None and alone.layer_choice is None
    assert alone.metrics.auroc == pytest.approx(best.layer_aurocs[layer], abs=1e-12)
    assert with_layer(alone, params).layer == layer and with_layer(alone, params).layer_auroc is None


def test_the_layer_param_is_checked() -> None:
    assert head_params("probe", {})["layer"] == "final"
    assert head_params("probe", {"layer": 7})["layer"] == 7
    assert head_params("probe", {"layer": "best"})["layer"] == "best"
    for bad in (-1, 1.5, "middle", True):
        with pytest.raises(ValueError, match="layer"):
            head_params("probe", {"layer": bad})
    with pytest.raises(ValueError):
        head_params("pawn", {"layer": 3})
    assert probe_layers("best", 4) == [0, 1, 2, 3, 4] and probe_layers("final", 4) == [4]
    assert probe_layers(2, 4) == [2]
