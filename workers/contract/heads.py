"""Heads: their ids, states and parameters, and what training one may hold."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from workers.contract.head_features import PAWN_FEATURES
from workers.contract.names import CAPTURE_TOPK

HEAD_KINDS = ("pawn", "los", "probe", "stack", "lens")

HEAD_ID_PATTERN = r"^head_[0-9a-f]{24}$"
MAX_STACK_INPUTS = 32  # a stack head's features (logprobe.schemas.heads.MAX_STACK_FEATURES)


class HeadError(BaseModel):
    code: str
    message: str


class HeadMetrics(BaseModel):
    """k-fold cross-validated metrics: every example is scored by a head that never saw it."""

    folds: int
    auroc: float  # the mean of the folds' AUROCs
    auroc_folds: list[float]
    auroc_pooled: float  # over all out-of-fold scores at once (what the threshold is chosen on)
    auroc_ci95: tuple[float, float]
    target_fpr: float
    threshold: float  # decide label 1 when the score > threshold (from the out-of-fold scores of label 0)
    tpr: float
    fpr: float
    confidence: str
    # probe heads on a layer (params.layer): the hidden_states index the head reads, and with layer "best" each
    # candidate layer's cross-validated AUROC (the chosen one is the highest; the figures above are its own)
    layer: int | None = None
    layer_auroc: dict[int, float] | None = None
    feature_auroc: dict[str, float] | None = None  # stack: each feature alone, cross-validated on the same folds


class LensMetrics(BaseModel):
    """A tuned lens's: per layer (hidden_states index, the translators' own) the mean KL(final || lens) in nats over
    the positions of the held-out texts, for the tuned lens (its stored float16 translators) and the logit lens."""

    held_out_texts: int
    held_out_positions: int
    train_texts: int
    train_positions: int
    steps: int
    kl_tuned: dict[int, float]
    kl_logit: dict[int, float]
    mean_kl_tuned: float
    mean_kl_logit: float
    layers_improved: int  # layers at which the tuned lens's held-out KL is below the logit lens's


class HeadState(BaseModel):
    head_id: str
    name: str
    kind: Literal["pawn", "los", "probe", "stack", "lens"]
    family: str
    model: str
    fingerprint: str
    hidden_size: int
    span: Any
    status: Literal["scoring", "queued", "training", "succeeded", "failed"]
    stage: str = ""
    progress: float = 0.0
    seed: int
    params: dict[str, float | int | str] = Field(default_factory=dict)
    examples: dict[str, int] = Field(default_factory=dict)  # per label ("0", "1")
    metrics: HeadMetrics | LensMetrics | None = None
    training_time_s: float | None = None
    n_parameters: int | None = None
    error: HeadError | None = None
    created_at: float = Field(default_factory=time.time)
    created_by: str | None = None  # "key <8 hex of its sha256>" or "anonymous" (app/platform/auth.py)
    finished_at: float | None = None
    expires_at: int | None = None
    features: list[dict[str, Any]] | None = None  # stack: the request's features (logprobe.schemas.heads.StackFeature)
    feature_fingerprints: dict[str, str] | None = None  # stack: each feature model's fingerprint when it was trained


# Writes a head's hash only while it exists (a head deleted during training stays deleted).
HEAD_WRITE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# How the pooled networks (pawn, los) train, by default.
_NETWORK_TRAINING: dict[str, float | int | str] = {
    "folds": 5,
    "max_epochs": 60,
    "patience": 10,
    "lr": 1e-2,
    "weight_decay": 0.1,
    "dropout": 0.1,
    "batch_size": 32,
    "val_fraction": 0.2,
}

# Each kind's parameters and their defaults; a request's `params` may override any of them (and nothing else).
HEAD_PARAMS: dict[str, dict[str, float | int | str]] = {
    "pawn": {
        **_NETWORK_TRAINING,
        "width": 32,  # token-feature MLP
        "gate_dims": 32,  # principal directions of the hidden states the gate sees
        "gate_width": 32,
        "max_positions": 1024,  # positions per example used in training (the first of the span)
    },
    "los": {
        **_NETWORK_TRAINING,
        "width": 32,
        "topk": 20,
        "max_positions": 1024,
    },
    # layer: "final" (the record's final states), a hidden_states index, or "best" (every layer, the one with the
    # highest cross-validated AUROC kept)
    "probe": {"folds": 5, "val_fraction": 0.2, "pool": "mean", "max_positions": 1 << 20, "layer": "final"},
    "stack": {"folds": 5, "val_fraction": 0.2},
    # the tuned lens (workers/heads/tuned_lens.py): tuned-lens' optimiser, on mini-batches of positions
    "lens": {
        "steps": 100,
        "batch_positions": 32,
        "optimizer": "sgd",
        "lr_scale": 1.0,
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "val_fraction": 0.2,
        "max_positions": 512,
    },
}

HEAD_PARAM_CHOICES = {"pool": ("mean", "last"), "optimizer": ("sgd", "adam")}

HEAD_PARAM_MAX = {
    "folds": 20,
    "max_epochs": 1000,
    "patience": 1000,
    "lr": 1.0,
    "weight_decay": 100.0,
    "batch_size": 4096,
    "width": 1024,
    "gate_dims": 256,
    "gate_width": 1024,
    "topk": CAPTURE_TOPK,
    "max_positions": 1 << 20,
    "steps": 100_000,
    "batch_positions": 4096,
    "lr_scale": 100.0,
}


def feature_labels(features: list[dict[str, Any]]) -> list[str]:
    """A stack head's features named for people: the sequence key read, `@model` when it is not the head's,
    `/reference_model` for a pair; a repeated label gets `#i`, its index."""
    labels = []
    for i, f in enumerate(features):
        label = f.get("value") or f["method"]
        label += f"@{f['model']}" if f.get("model") else ""
        label += f"/{f['reference_model']}" if f.get("reference_model") else ""
        labels.append(label if label not in labels else f"{label}#{i}")
    return labels


def head_params(kind: str, given: dict[str, float | int | str]) -> dict[str, float | int | str]:
    """The kind's defaults overridden by `given`; ValueError naming what is wrong."""
    defaults = HEAD_PARAMS[kind]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{kind} heads take no parameter {unknown[0]!r}; they take {sorted(defaults)}")
    out = dict(defaults)
    for name, value in given.items():
        default = defaults[name]
        if name == "layer":
            if value not in ("final", "best") and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError('layer is a hidden_states index (0 = the embeddings), "best" or "final"')
            out[name] = value
        elif isinstance(default, str):
            if value not in HEAD_PARAM_CHOICES[name]:
                raise ValueError(f"{name} is one of {list(HEAD_PARAM_CHOICES[name])}")
        elif isinstance(value, str | bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number")
        elif isinstance(default, int) and (int(value) != value or (name == "folds" and value < 2)):
            raise ValueError(f"{name} must be an integer" + (" of at least 2" if name == "folds" else ""))
        elif name in ("val_fraction", "dropout", "momentum") and value >= 1:
            raise ValueError(f"{name} must lie in (0, 1)")
        elif value > HEAD_PARAM_MAX.get(name, value):
            raise ValueError(f"{name} is at most {HEAD_PARAM_MAX[name]}")
        out[name] = int(value) if isinstance(default, int) else value
    return out


def probe_layers(layer: float | int | str, n_layers: int) -> list[int]:
    """The hidden_states indices a probe with params.layer `layer` reads, of a model with `n_layers` layers: its one
    layer ("final": the last), or every one for "best"."""
    if layer == "best":
        return list(range(n_layers + 1))
    return [n_layers if layer == "final" else int(layer)]


def head_training_bytes(kind: str, positions: list[int], hidden_size: int, params: dict[str, float | int | str]) -> int:
    """What a head's training holds for its inputs, in bytes (workers.heads.train.Inputs, float32): each example's
    features at its positions padded to the longest, and pawn's hidden states (one more row each); a probe keeps one
    pooled state per example beside one record's states at a time. `positions`: per distinct example, its span's
    length capped at `max_positions`. The gateway refuses a head above its budget before accepting it."""
    n, longest = len(positions), max(positions, default=0)
    if kind == "lens":  # every position's raw states of every layer (hidden_size: times the layers), float32
        return 4 * hidden_size * sum(positions)
    if kind == "stack":  # one value per feature and example (the features are counted, not the positions)
        return 8 * n * MAX_STACK_INPUTS
    if kind == "probe":
        return 4 * hidden_size * (n + longest)
    features = len(PAWN_FEATURES) if kind == "pawn" else int(params["topk"]) + 1
    padded = n * longest * (4 * features + 9)  # float32 features, int64 positions, bool mask
    if kind == "pawn":
        padded += 4 * hidden_size * sum(p + 1 for p in positions)
    return padded
