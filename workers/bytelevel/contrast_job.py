"""The worker side of a contrastive job at the byte level: each view's cover states after its own prompt, the
byte-stepping decoder, and the record of the answer under the record view's model, re-tokenised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.bytelevel.decoding import ByteView, decode_bytes
from workers.bytelevel.incremental import TreeStream
from workers.bytelevel.job import byte_level_failures, encoder, hf_parts
from workers.bytelevel.stepping import ByteStates
from workers.decoding import Decoded
from workers.outcomes import JobFailed
from workers.protocol import ContrastJob, JobOutcome

if TYPE_CHECKING:
    from workers.jobs import JobExecutor


def byte_view(backend: Any, prefix_ids: list[int], weight: float, temperature: float, max_states: int) -> ByteView:
    """A view of an hf backend's model after its prompt tokens, stepping by bytes (501 on other backends)."""
    model, tokenizer, vocab = hf_parts(backend)
    encode = encoder(tokenizer)
    states = ByteStates(
        TreeStream(model, backend.head, prefix_ids),
        vocab,
        lambda text: encode([text])[0],
        backend.card.eos_token_ids,
        max_states=max_states,
    )
    return ByteView(states, weight, temperature)


def run_byte_contrast(executor: JobExecutor, job: ContrastJob) -> JobOutcome:
    """Decode by bytes (workers.bytelevel.decoding). The stored record is the record view's prompt tokens followed
    by the answer's text as that model's tokenizer encodes it (no end token), scored by that model."""
    if job.record_view >= len(job.views) or (job.plausibility is not None and job.plausibility.view >= len(job.views)):
        raise JobFailed("invalid_view", "record_view and plausibility.view must name one of the views")
    backends, views = [], []
    for spec in job.views:
        backend = executor.backend_for(spec.model, spec.fingerprint)
        executor.check_ids(spec.prefix_ids, backend)
        backends.append(backend)
        views.append(byte_view(backend, spec.prefix_ids, spec.weight, spec.temperature, job.max_states))
    # a byte adds at most one token to a state: the bytes are bounded like tokens
    budget = executor.completion_budget(
        job.sampling, [(b, s.prefix_ids) for b, s in zip(backends, job.views, strict=True)]
    )
    sampling = job.sampling.model_copy(update={"max_tokens": budget})
    with byte_level_failures(
        lambda exc: f"byte-level decoding needs more than {exc.limit} cover states in a view; raise max_states"
    ):
        decoded = decode_bytes(views, sampling, **executor.contrast_options(job))
    shown, spec = backends[job.record_view], job.views[job.record_view]
    answer = encoder(shown.tokenizer)([decoded.text])[0] if decoded.data else []  # type: ignore[attr-defined]
    record = Decoded(answer, decoded.finish_reason, [])
    rid = executor.store_completion(job.tenant, shown, spec.prefix_ids, record, job.retain)
    executor.keep_steps(job.job_id, decoded.steps)
    return executor.completed(job, rid, Decoded(decoded.completion, decoded.finish_reason, decoded.steps))
