"""The worker side of a bytes job: plan the covers, run the tree forward, store the byte record."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from workers.bytelevel.covers import (
    ByteLevel,
    ByteNotCovered,
    CoverSetTooLarge,
    EncodingNotSpelled,
    all_plan,
    byte_distributions,
    canonical_plan,
)
from workers.bytelevel.forward import head_rows, tree_hidden
from workers.bytelevel.records import ByteRecordMeta, encode_byte_record
from workers.bytelevel.vocab import ByteVocab, vocab_from_tokenizer
from workers.contract.jobs import AnyJob, BytesJob, JobOutcome
from workers.contract.keys import bytes_key
from workers.contract.usage import count_record_bytes
from workers.handlers.base import Context, Handler
from workers.outcomes import JobFailed

_VOCABS: dict[str, ByteVocab] = {}  # per model fingerprint: built once (a second or two for 262k tokens)


def start_token(card: Any) -> int:
    """What every state starts from: BOS, or the end-of-text token for models that add no BOS (GPT-2 style)."""
    if card.bos_token_id is not None:
        return int(card.bos_token_id)
    if card.eos_token_ids:
        return int(card.eos_token_ids[0])
    raise JobFailed("byte_level_unsupported", f"{card.name!r} has no BOS or end-of-text token to start from")


def hf_parts(backend: Any) -> tuple[Any, Any, ByteVocab]:
    """An hf backend's model, tokenizer and byte vocabulary (built once per model); 501 on other backends."""
    model, tokenizer = getattr(backend, "model", None), getattr(backend, "tokenizer", None)
    if model is None or tokenizer is None:
        raise JobFailed("byte_level_unsupported", "byte-level work runs on the transformers (hf) backend", 501)
    vocab = _VOCABS.get(backend.card.fingerprint)
    if vocab is None:
        vocab = _VOCABS[backend.card.fingerprint] = vocab_from_tokenizer(tokenizer)
    return model, tokenizer, vocab


def encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    """Texts to token ids as the covers take them: no special tokens added, none read from the text."""

    def encode_batch(texts: list[str]) -> list[list[int]]:
        out = tokenizer(texts, add_special_tokens=False, split_special_tokens=True).input_ids
        return [list(ids) for ids in out]

    return encode_batch


def byte_level(backend: Any, text: str, mode: str, max_states: int) -> ByteLevel:
    """A text's exact byte-level distributions under an hf backend's model (the work of a bytes job)."""
    model, tokenizer, vocab = hf_parts(backend)
    card = backend.card
    data, start, encode_batch = text.encode("utf-8"), start_token(card), encoder(tokenizer)
    with byte_level_failures():
        if mode == "all":
            plan = all_plan(vocab, data, start, max_states)
        else:
            plan = canonical_plan(vocab, data, encode_batch, start, max_states)
        if int(plan.depths.max()) + 1 > card.context_length:
            raise JobFailed("context_length_exceeded", f"the text's tokenizations run past {card.context_length}")
        return byte_distributions(plan, vocab, head_rows(tree_hidden(model, plan), backend.head))


@contextmanager
def byte_level_failures(too_large: Callable[[CoverSetTooLarge], str] = str) -> Iterator[None]:
    """The byte-level work's own failures as the job's 422s (`too_large` words the state bound's)."""
    try:
        yield
    except CoverSetTooLarge as exc:
        raise JobFailed("cover_set_too_large", too_large(exc), 422) from exc
    except ByteNotCovered as exc:
        raise JobFailed("byte_not_covered", str(exc), 422) from exc
    except EncodingNotSpelled as exc:
        raise JobFailed("byte_level_unsupported", str(exc), 422) from exc


def run_bytes_job(client: redis.Redis, backend: Any, job: BytesJob, ttl_s: int) -> JobOutcome:
    key = bytes_key(job.tenant, job.record_id)
    if client.exists(key):  # another delivery did it
        return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)
    result = byte_level(backend, job.text, job.mode, job.max_states)
    card = backend.card
    meta = ByteRecordMeta(
        record_id=job.record_id,
        tenant=job.tenant,
        model=card.name,
        fingerprint=card.fingerprint,
        mode=job.mode,
        n_bytes=len(job.text.encode("utf-8")),
        states=result.states,
    )
    fields = encode_byte_record(meta, result.logprob, result.logdist)
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
    pipe.expire(key, ttl_s)
    pipe.execute()
    usage = client.pipeline(transaction=False)  # a byte record counts against its tenant's quota as a record does
    count_record_bytes(usage, job.tenant, sum(len(v) for v in fields.values()), time.time(), ttl_s)
    usage.execute()
    return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)


def bytes_job(job: AnyJob, ctx: Context) -> JobOutcome:
    assert isinstance(job, BytesJob)
    return run_bytes_job(ctx.redis, ctx.engines.backend_for(job.model, job.fingerprint), job, ctx.records.record_ttl_s)


BYTES = Handler("bytes", bytes_job)
