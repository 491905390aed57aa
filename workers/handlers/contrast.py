"""The `contrast` job: a contrastive decoding. Token-level decodings join the running batch (workers.in_flight) and
run alone here only when their views' engines cannot batch streams; byte-level ones are heavy and step by bytes."""

from __future__ import annotations

import time
from typing import Any

import redis

from workers.bytelevel.contrast_job import byte_view
from workers.bytelevel.decoding import decode_bytes
from workers.bytelevel.job import byte_level_failures, encoder
from workers.contract.jobs import AnyJob, ContrastJob, DecodeStep, JobOutcome, Sampling
from workers.contract.keys import steps_channel, steps_key
from workers.contract.lifetimes import put_until
from workers.decoding import Decoded, View, decode
from workers.dola import LayerStreams, dola_streams
from workers.engines import check_ids, completion_budget
from workers.handlers.base import Context, Handler
from workers.handlers.generate import completed
from workers.outcomes import JobFailed

STEPS_TTL_S = 3600


def contrast_views(job: ContrastJob, ctx: Context) -> tuple[list[View], Sampling]:
    """A token-level contrastive job's views, and its sampling with max_tokens bounded by every view's model (a bad
    job raises JobFailed)."""
    views = []
    for spec in job.views:
        backend = ctx.engines.backend_for(spec.model, spec.fingerprint)
        check_ids(spec.prefix_ids, backend)
        if spec.dola_layers is not None:
            try:
                backend = dola_streams(backend, spec.dola_layers)
            except ValueError as exc:
                raise JobFailed("layers_unsupported", str(exc)) from exc
        views.append(View(backend, spec.prefix_ids, spec.weight, spec.temperature))
    if len({view.backend.card.vocab_size for view in views}) != 1:
        raise JobFailed("tokenizer_mismatch", "the views' models do not share a vocabulary")
    _check_views(job)
    budget = completion_budget(job.sampling, [(view.backend, view.prefix_ids) for view in views])
    return views, job.sampling.model_copy(update={"max_tokens": budget})


def _check_views(job: ContrastJob) -> None:
    if job.record_view >= len(job.views) or (job.plausibility is not None and job.plausibility.view >= len(job.views)):
        raise JobFailed("invalid_view", "record_view and plausibility.view must name one of the views")


def contrast_options(job: ContrastJob, client: redis.Redis, views: list[View] | None = None) -> dict[str, Any]:
    """What either decoding loop takes from a contrastive job: the cut or USCD's rule, top-k, and the stream (and,
    given the token views, the first view's detokenizer for stop strings)."""
    channel = steps_channel(job.job_id)
    return {
        "plausibility": job.plausibility,
        "rule": job.selective,
        "topk": job.topk,
        "on_step": lambda step: client.publish(channel, step.model_dump_json()),
        **({"detokenize": views[0].backend.decode} if views else {}),
    }


def keep_steps(client: redis.Redis, job_id: str, steps: list[DecodeStep]) -> None:
    """A contrastive job's steps, where the gateway reads them (JSON list)."""
    listed = "[" + ",".join(step.model_dump_json() for step in steps) + "]"
    put_until(client, steps_key(job_id), listed, time.time() + STEPS_TTL_S)


def contrast_done(job: ContrastJob, views: list[View], decoded: Decoded, ctx: Context) -> JobOutcome:
    """A finished decoding: its record stored under the record view's model, its steps kept; the outcome."""
    shown = views[job.record_view]
    backend = shown.backend.inner if isinstance(shown.backend, LayerStreams) else shown.backend
    rid = ctx.records.store_completion(job.tenant, backend, shown.prefix_ids, decoded, job.retain)
    keep_steps(ctx.redis, job.job_id, decoded.steps)
    return completed(job, rid, decoded)


def contrast_alone(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, ContrastJob)
    if job.level == "byte":
        return byte_contrast(job, ctx)
    views, sampling = contrast_views(job, ctx)
    return contrast_done(job, views, decode(views, sampling, **contrast_options(job, ctx.redis, views)), ctx)


def byte_contrast(job: ContrastJob, ctx: Context) -> JobOutcome:
    """Decode by bytes (workers.bytelevel.decoding). The stored record is the record view's prompt tokens followed
    by the answer's text as that model's tokenizer encodes it (no end token), scored by that model."""
    _check_views(job)
    backends, views = [], []
    for spec in job.views:
        backend = ctx.engines.backend_for(spec.model, spec.fingerprint)
        check_ids(spec.prefix_ids, backend)
        backends.append(backend)
        views.append(byte_view(backend, spec.prefix_ids, spec.weight, spec.temperature, job.max_states))
    # a byte adds at most one token to a state: the bytes are bounded like tokens
    budget = completion_budget(job.sampling, [(b, s.prefix_ids) for b, s in zip(backends, job.views, strict=True)])
    sampling = job.sampling.model_copy(update={"max_tokens": budget})
    with byte_level_failures(
        lambda exc: f"byte-level decoding needs more than {exc.limit} cover states in a view; raise max_states"
    ):
        decoded = decode_bytes(views, sampling, **contrast_options(job, ctx.redis))
    shown, spec = backends[job.record_view], job.views[job.record_view]
    answer = encoder(shown.tokenizer)([decoded.text])[0] if decoded.data else []  # type: ignore[attr-defined]
    record = Decoded(answer, decoded.finish_reason, [])
    rid = ctx.records.store_completion(job.tenant, shown, spec.prefix_ids, record, job.retain)
    keep_steps(ctx.redis, job.job_id, decoded.steps)
    return completed(job, rid, Decoded(decoded.completion, decoded.finish_reason, decoded.steps))


CONTRAST = Handler("contrast", contrast_alone)
