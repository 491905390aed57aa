"""The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): each layer's residual stream read as a
next-token distribution through the model's own final norm and unembedding, beside the final layer's. With a
trained `lens` head (the tuned lens, Belrose et al. 2023) each layer below the last passes its affine translator
first (workers/heads/tuned_lens.py).

One forward keeps every asked layer's states; the rows are then read in chunks of positions, a slice of heavy work
each (workers.lanes), with the final distribution of the chunk computed once for all layers. KL is KL(final ||
layer), the direction tuned-lens trains and reports (Belrose et al. 2023)."""

from __future__ import annotations

import time

import torch
from safetensors.numpy import load as st_load_numpy
from safetensors.torch import load as st_load_torch

from workers.backends.base import Backend
from workers.capture import Unembedding, chunk_rows_for, row_statistics
from workers.contract.heads import HeadState
from workers.contract.jobs import AnyJob, JobOutcome, LensJob, LensLayer, LensResult
from workers.contract.keys import head_key, lens_key, record_key
from workers.contract.lifetimes import put_until
from workers.contract.names import as_bytes
from workers.contract.records import decode_meta, layer_field
from workers.engines import check_ids
from workers.handlers.base import Context, Handler
from workers.heads.tuned_lens import Translators, from_stored
from workers.lanes import checkpoint
from workers.outcomes import JobFailed

RESULT_TTL_S = 3600


def layer_readings(
    states: list[torch.Tensor], final: torch.Tensor, token_ids: list[int], head: Unembedding, top_k: int
) -> list[LensLayer]:
    """Per layer (its states [T, d], already through the final norm) and position 1..T-1: the logprob and rank of
    the token that came, the entropy, KL(final || layer) and the top_k alternatives."""
    targets = torch.tensor(token_ids[1:])
    rows = len(token_ids) - 1
    step = chunk_rows_for(head.vocab_size)
    parts: list[list[dict[str, torch.Tensor]]] = [[] for _ in states]
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        final_logp = torch.log_softmax(head.logits(final[lo:hi]), dim=-1)
        for i, layer_states in enumerate(states):
            logits = head.logits(layer_states[lo:hi])
            stats = row_statistics(logits, targets[lo:hi], max(1, top_k))
            logp = torch.log_softmax(logits, dim=-1)
            kl = torch.linalg.vecdot(final_logp.exp(), final_logp - logp)
            parts[i].append({**stats, "kl": kl})
            checkpoint()  # a slice: one chunk of positions of one layer
    out = []
    for layer_parts in parts:
        joined = {name: torch.cat([p[name] for p in layer_parts]) for name in layer_parts[0]}
        out.append(
            LensLayer(
                layer=0,
                logprob=joined["logprob"].tolist(),
                rank=joined["rank"].tolist(),
                entropy=joined["entropy"].tolist(),
                kl_to_final=joined["kl"].clamp_min(0.0).tolist(),
                top1=joined["topk_ids"][:, 0].tolist(),
                top_ids=joined["topk_ids"][:, :top_k].tolist(),
                top_logprobs=joined["topk_logprobs"][:, :top_k].tolist(),
            )
        )
    return out


def run_lens_job(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, LensJob)
    backend = ctx.engines.backend_for(job.model, job.fingerprint)
    check_ids(job.token_ids, backend)
    n_layers = backend.card.layers
    layer_states = getattr(backend, "layer_states", None)
    if n_layers is None or layer_states is None:
        raise JobFailed(
            "layers_unsupported", f"{job.model!r}'s backend ({backend.card.backend}) does not expose its layers", 501
        )
    if not all(0 <= layer <= n_layers for layer in job.layers):
        raise JobFailed("invalid_layers", f"layers lie in [0, {n_layers}] ({job.model!r} has {n_layers} layers)")
    checkpoint()
    asked = [*job.layers, n_layers]
    translators = None if job.lens_head is None else tuned_lens(ctx, job, backend)
    if job.record_id is not None:  # the record kept these layers: no forward
        *states, final = kept_states(ctx, job, backend, asked, translators)
    elif translators is None:
        *states, final = layer_states(job.token_ids, asked)
    else:
        _, raw = backend.states_with_layers(job.token_ids, asked)  # type: ignore[attr-defined]
        *states, final = read_raw(backend, asked, raw, translators)
    checkpoint()  # a slice: the forward
    *readings, last = layer_readings([*states, final], final, job.token_ids, backend.head, job.top_k)
    for layer, reading in zip(job.layers, readings, strict=True):
        reading.layer = layer
    result = LensResult(layers=readings, final_top1=last.top1, n_layers=n_layers)
    put_until(ctx.redis, lens_key(job.job_id), result.model_dump_json(), time.time() + RESULT_TTL_S)
    return JobOutcome(job_id=job.job_id, ok=True)


def read_raw(
    backend: Backend, layers: list[int], raw: list[torch.Tensor], translators: Translators | None
) -> list[torch.Tensor]:
    """Raw states of `layers` as the unembedding reads them: below the last layer through the tuned lens's
    translator (if any) and the final norm, the last as it is."""
    n_layers = backend.card.layers
    through_norm = getattr(backend, "through_final_norm", None)
    assert through_norm is not None
    out = []
    with torch.no_grad():
        for layer, states in zip(layers, raw, strict=True):
            if layer != n_layers and translators is not None:
                states = translators(states.float(), layer)
            out.append(states if layer == n_layers else through_norm(states))
    return out


def tuned_lens(ctx: Context, job: LensJob, backend: Backend) -> Translators:
    """The translators of the job's `lens` head; JobFailed head_not_found when it is gone (or is not a trained
    tuned lens of this model)."""
    assert job.lens_head is not None
    raw_state, raw_weights = ctx.redis.hmget(head_key(job.tenant, job.lens_head), ["state", "weights"])
    state = None if raw_state is None else HeadState.model_validate_json(as_bytes(raw_state) or b"")
    if state is None or raw_weights is None or state.kind != "lens" or state.fingerprint != backend.card.fingerprint:
        raise JobFailed("head_not_found", f"head {job.lens_head!r} is gone or is not a trained tuned lens", 404)
    translators = from_stored(st_load_numpy(as_bytes(raw_weights) or b""))
    if translators.weight.shape[:2] != (backend.card.layers, backend.card.hidden_size):
        raise JobFailed("head_model_mismatch", f"head {job.lens_head!r} was trained on another model's layers", 422)
    return translators


def kept_states(
    ctx: Context, job: LensJob, backend: Backend, layers: list[int], translators: Translators | None = None
) -> list[torch.Tensor]:
    """The states of `layers` that the job's record kept, rows of every token but the last, as `layer_states` gives
    them (below the last layer through the tuned lens's translators, if any, and the final norm); JobFailed if the
    record lost them or is of other tokens."""
    assert job.record_id is not None
    key = record_key(job.tenant, job.record_id)
    n_layers = backend.card.layers
    through_norm = getattr(backend, "through_final_norm", None)
    raw_meta, *blobs = ctx.redis.hmget(key, ["meta", *(layer_field(layer, n_layers or 0) for layer in layers)])
    meta = None if raw_meta is None else decode_meta(as_bytes(raw_meta) or b"")
    if meta is None or meta.token_ids != job.token_ids or meta.fingerprint != backend.card.fingerprint:
        raise JobFailed("record_not_found", "the record that kept the layers is gone; ask again", 404)
    if through_norm is None or any(blob is None for blob in blobs):
        raise JobFailed("layer_not_stored", f"record {job.record_id} no longer keeps layers {layers}", 409)
    states = [st_load_torch(as_bytes(blob) or b"")["hidden"] for blob in blobs]
    return read_raw(backend, layers, states, translators)


LENS = Handler("lens", run_lens_job)
