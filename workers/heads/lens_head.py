"""A `lens` head's training (a `train_head` job of kind lens): the examples' records give their tokens, one forward
each gives every layer's raw states at the span's positions, the texts are split into training and held-out ones,
the translators are trained (workers/heads/tuned_lens.py) and the metrics compare the held-out KL to the final layer
of the tuned lens (its stored float16 translators) with the logit lens's, layer by layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis
import torch

from workers.backends.base import Backend
from workers.contract.heads import LensMetrics
from workers.contract.jobs import HeadJob
from workers.contract.keys import record_key
from workers.contract.names import ProtocolError, as_bytes
from workers.contract.records import decode_meta
from workers.heads.data import HeadInputError, unique_examples
from workers.heads.tuned_lens import LensData, from_stored, held_out_split, layer_kl, stored, train_translators
from workers.lanes import checkpoint

EVAL_CHUNK = 64  # positions read at once when the held-out KL is measured


@dataclass
class TrainedLens:
    weights: dict[str, np.ndarray]
    metrics: LensMetrics
    n_parameters: int


def _tokens(client: redis.Redis, job: HeadJob, max_positions: int) -> list[tuple[list[int], int, int]]:
    """Per distinct example: its record's tokens and the rows [lo, hi) that predict the span's positions."""
    out = []
    for example in unique_examples(job):
        raw = as_bytes(client.hget(record_key(job.tenant, example.record_id), "meta"))
        if raw is None:
            raise HeadInputError("unknown_record", f"record {example.record_id} is gone (expired or evicted)")
        try:
            meta = decode_meta(raw)
        except ProtocolError as exc:
            raise HeadInputError("record_corrupt", f"record {example.record_id}: {exc}") from exc
        if meta.fingerprint != job.fingerprint:
            raise HeadInputError("mixed_models", f"record {example.record_id} was made by other weights")
        if not 1 <= example.start < example.stop <= len(meta.token_ids):
            raise HeadInputError("invalid_span", f"positions [{example.start}, {example.stop}) outside the record")
        stop = min(example.stop, example.start + max_positions)
        out.append((meta.token_ids[:stop], example.start - 1, stop - 1))
    return out


def _states(backend: Backend, texts: list[tuple[list[int], int, int]], n_layers: int) -> LensData:
    """Every layer's raw states and the final ones at the texts' rows, float32, one forward a text (a slice each)."""
    forward = getattr(backend, "states_with_layers", None)
    if forward is None:
        raise HeadInputError("layers_unsupported", f"{backend.card.name!r}'s backend does not expose its layers")
    layers, finals = [], []
    for ids, lo, hi in texts:
        checkpoint()  # a slice: one forward
        final, states = forward(ids, list(range(n_layers)))
        layers.append(torch.stack([s[lo:hi] for s in states]).float().clone())
        finals.append(final[lo:hi].float().clone())
    return LensData(torch.cat(layers, dim=1), torch.cat(finals))


def train_lens_head(
    client: redis.Redis,
    job: HeadJob,
    backend: Backend,
    params: dict[str, float | int | str],
    progress: Callable[[str, float], None],
) -> TrainedLens:
    n_layers = backend.card.layers
    lens_readout = getattr(backend, "lens_readout", None)
    if n_layers is None or lens_readout is None:
        raise HeadInputError("layers_unsupported", f"{job.model!r}'s backend does not expose its layers")
    texts = _tokens(client, job, int(params["max_positions"]))
    if len(texts) < 2:
        raise HeadInputError("too_few_examples", "a tuned lens needs at least two distinct texts (one held out)")
    train_idx, held_idx = held_out_split(len(texts), float(params["val_fraction"]), job.seed)
    progress("reading every layer of the texts", 0.0)
    train = _states(backend, [texts[i] for i in train_idx], n_layers)
    held = _states(backend, [texts[i] for i in held_idx], n_layers)
    readout = lens_readout()
    steps = int(params["steps"])

    def step_done(step: int) -> None:
        if step % 5 == 0 or step == steps:
            progress(f"training: step {step} of {steps}", 0.05 + 0.8 * step / steps)

    translators = train_translators(
        train,
        readout,
        backend.head.logits,  # the final states are the decoder's output: through its norm already
        steps,
        int(params["batch_positions"]),
        job.seed,
        optimizer=str(params["optimizer"]),
        lr_scale=float(params["lr_scale"]),
        momentum=float(params["momentum"]),
        weight_decay=float(params["weight_decay"]),
        progress=step_done,
    )
    weights = stored(translators)
    progress("measuring the held-out KL per layer", 0.85)
    tuned = layer_kl(from_stored(weights), held, readout, backend.head.logits, EVAL_CHUNK)
    logit = layer_kl(None, held, readout, backend.head.logits, EVAL_CHUNK)
    metrics = LensMetrics(
        held_out_texts=len(held_idx),
        held_out_positions=held.n_positions,
        train_texts=len(train_idx),
        train_positions=train.n_positions,
        steps=steps,
        kl_tuned=dict(enumerate(tuned)),
        kl_logit=dict(enumerate(logit)),
        mean_kl_tuned=float(np.mean(tuned)),
        mean_kl_logit=float(np.mean(logit)),
        layers_improved=sum(t < g for t, g in zip(tuned, logit, strict=True)),
    )
    return TrainedLens(weights, metrics, sum(p.numel() for p in translators.parameters()))
