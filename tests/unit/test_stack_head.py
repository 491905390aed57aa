"""The `stack` head kind: a calibrated logistic combination of analysis methods' sequence values. Its numpy
forward equals the torch module (undefined values read as the training mean), and on features built so that the
label is their sum, the stack beats each feature alone on the same folds (reported in its metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.analysis.heads import stack_forward
from app.platform.errors import ApiError
from app.serving.stack import check_features
from logprobe.schemas.consistency import ConsistencyOptions
from logprobe.schemas.heads import StackFeature
from workers.contract.heads import feature_labels, head_params
from workers.contract.jobs import HeadExample
from workers.heads.data import stack_example
from workers.heads.models import Stack
from workers.heads.train import auroc, train_head


def _examples(features: np.ndarray, labels: np.ndarray) -> list:
    return [
        stack_example(
            HeadExample(
                record_id="0" * 32,
                label=int(y),
                start=1,
                stop=2,
                features=[None if np.isnan(v) else float(v) for v in row],
            )
        )
        for row, y in zip(features, labels, strict=True)
    ]


def test_the_forward_fills_undefined_values_with_the_training_mean_as_torch_does() -> None:
    rng = np.random.default_rng(0)
    model = Stack(5)
    with torch.no_grad():
        model.fill.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0]))
        model.mean.copy_(torch.from_numpy(rng.normal(size=5).astype(np.float32)))
        model.std.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size=5).astype(np.float32)))
        model.lin.weight.copy_(torch.from_numpy(rng.normal(size=(1, 5)).astype(np.float32)))
        model.lin.bias.fill_(0.3)
    w = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
    values = np.array([1.0, np.nan, -0.5, np.nan, 2.0])
    with torch.no_grad():
        expected = float(model(torch.from_numpy(values.astype(np.float32))[None])[0])
    filled = np.where(np.isnan(values), w["fill"], values)
    reference = float(((filled - w["mean"]) / w["std"]) @ w["lin.weight"][0] + w["lin.bias"][0])
    assert abs(stack_forward(w, values) - expected) <= 1e-5
    assert abs(stack_forward(w, values) - reference) <= 1e-12


def test_the_stack_beats_each_feature_where_the_label_is_their_sum() -> None:
    """Label 1 when f0 + f1 + small noise > 0, f0 and f1 independent: each alone reaches about 0.8, both about
    0.98; a third feature is pure noise, with a tenth of its values undefined."""
    rng = np.random.default_rng(3)
    n = 240
    f = rng.normal(size=(n, 3))
    labels = (f[:, 0] + f[:, 1] + 0.2 * rng.normal(size=n) > 0).astype(np.int64)
    f[rng.random(n) < 0.1, 2] = np.nan
    params = head_params("stack", {})
    trained = train_head("stack", _examples(f, labels), seed=1, params=params, target_fpr=0.05)
    alone = trained.feature_auroc
    assert alone is not None and len(alone) == 3
    assert trained.metrics.auroc >= 0.95
    assert all(trained.metrics.auroc > a + 0.1 for a in alone), (trained.metrics.auroc, alone)
    assert 0.7 <= alone[0] <= 0.9 and 0.7 <= alone[1] <= 0.9 and abs(alone[2] - 0.5) < 0.15
    # the fill is the mean of the defined values of the training split (a fifth is held out to pick the L2
    # strength); the stored head's scores agree with its out-of-fold quality
    assert 0 < abs(float(trained.weights["fill"][2]) - float(np.nanmean(f[:, 2]))) <= 0.1
    w = {k: v.astype(np.float64) for k, v in trained.weights.items()}
    scores = np.array([stack_forward(w, row) for row in f])
    assert auroc(scores[labels == 1], scores[labels == 0]) >= 0.97


def test_features_are_checked_and_labelled() -> None:
    features = check_features(
        [
            StackFeature(method="fast_detectgpt"),
            StackFeature(method="gltr", value="gltr.top10", model="smollm2"),
            StackFeature(method="binoculars", model="smollm2", reference_model="gemma"),
            StackFeature(method="fast_detectgpt", model="tiny"),
        ],
        "smollm2",
    )
    assert [f["family"] for f in features] == ["detect"] * 4
    assert [f["model"] for f in features] == [None, None, None, "tiny"]  # the head's own model is left out
    assert feature_labels(features) == ["fast_detectgpt", "gltr.top10", "binoculars/gemma", "fast_detectgpt@tiny"]
    assert feature_labels([features[0], features[0]]) == ["fast_detectgpt", "fast_detectgpt#1"]


def test_consistency_features_keep_their_sampling() -> None:
    features = check_features(
        [
            StackFeature(method="semantic_entropy", consistency=ConsistencyOptions(n=3, seed=1)),
            StackFeature(method="p_true"),
        ],
        "smollm2",
    )
    assert [f["family"] for f in features] == ["consistency", "consistency"]
    assert features[0]["consistency"]["n"] == 3 and features[1]["consistency"] == ConsistencyOptions().model_dump()


@pytest.mark.parametrize(
    ("feature", "param"),
    [
        (StackFeature(method="nope"), "features.0.method"),
        (StackFeature(method="entropy"), "features.0.method"),  # a value per token
        (StackFeature(method="fast_detectgpt", family="membership"), "features.0.family"),
        (StackFeature(method="min_k", reference_model="x"), "features.0.reference_model"),
        (StackFeature(method="mean_confidence_gain"), "features.0.reference_model"),
        (StackFeature(method="min_k", params={"k": 2.0}), "features.0.params"),
        (StackFeature(method="gltr", value="top10"), "features.0.value"),
        (StackFeature(method="min_k", consistency=ConsistencyOptions()), "features.0.consistency"),
        (StackFeature(method="p_true", reference_model="x"), "features.0.reference_model"),
        (
            StackFeature(method="p_true", consistency=ConsistencyOptions(methods=["p_true"])),
            "features.0.consistency.methods",
        ),
    ],
)
def test_each_bad_feature_says_which_part_is_wrong(feature: StackFeature, param: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_features([feature], "smollm2")
    assert (caught.value.status, caught.value.code, caught.value.param) == (422, "invalid_features", param)
