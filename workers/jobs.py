"""Running one job against a backend: capture and store records, generate, rebuild rows for export."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import redis
import torch
from safetensors.numpy import load as st_load_numpy
from safetensors.torch import load as st_load_torch
from safetensors.torch import save as st_save_torch

from workers.attribution_job import run_attribution_job
from workers.backends.base import Backend
from workers.bytelevel.contrast_job import run_byte_contrast
from workers.bytelevel.job import run_bytes_job
from workers.capture import (
    Unembedding,
    capture_statistics,
    capture_statistics_many,
    chunk_rows_for,
    cross_statistics,
    logits_statistics,
    rebuild_rows,
)
from workers.decoding import Decoded, View, decode
from workers.heads.job import run_head_job
from workers.in_flight import InFlight
from workers.lanes import checkpoint
from workers.outcomes import JobFailed, alone, refused, worker_error
from workers.probe import STORAGE_DTYPES
from workers.protocol import (
    CAPTURE_TOPK,
    CROSS_ARRAYS,
    MAX_BLOB_BYTES,
    RECORD_CORE_FIELDS,
    AnyJob,
    AttributionJob,
    BytesJob,
    ContrastJob,
    CrossJob,
    DecodeStep,
    GenerateJob,
    HeadJob,
    JobOutcome,
    ModelCard,
    ProtocolError,
    RecordMeta,
    Retain,
    RowsJob,
    Sampling,
    ScoreJob,
    as_bytes,
    cross_key,
    decode_meta,
    encode_arrays,
    export_key,
    record_id,
    record_key,
    rows_field,
    steps_channel,
    steps_key,
)

log = logging.getLogger(__name__)

EXPORT_TTL_S = 120
STEPS_TTL_S = 3600
BATCH_TOKENS = 8192  # padded tokens in one batched scoring forward


class JobExecutor:
    def __init__(self, client: redis.Redis, backends: dict[str, Backend], secret: bytes, record_ttl_s: int) -> None:
        self.redis = client
        self.backends = backends
        self.secret = secret
        self.record_ttl_s = record_ttl_s
        self.in_flight = InFlight(self)  # generations, and scoring on engines with their own scheduler

    def run(self, job: AnyJob) -> JobOutcome:
        try:
            if isinstance(job, CrossJob):
                return self._cross(job)
            if isinstance(job, ContrastJob):
                return self._contrast(job)
            if isinstance(job, HeadJob):  # reads records only: no backend, no weights
                return run_head_job(self.redis, job)
            if isinstance(job, AttributionJob):
                return run_attribution_job(self, job)
            backend = self.backend_for(job.model, job.fingerprint)
            if isinstance(job, ScoreJob):
                return self._score(job, backend)
            if isinstance(job, GenerateJob):
                return self.in_flight.run([job])[0]
            if isinstance(job, BytesJob):
                return run_bytes_job(self.redis, backend, job, self.record_ttl_s)
            return self._rows(job, backend)
        except JobFailed as failed:
            return refused(job, failed)

    def run_scores(self, jobs: list[ScoreJob]) -> list[JobOutcome]:
        """Scoring jobs read together: those of one model that need a forward share batched forwards (of at
        most BATCH_TOKENS padded tokens, similar lengths together); each record is the one it would be alone.
        A job that fails, fails alone; if a batched forward fails, its jobs run one at a time."""
        outcomes: dict[int, JobOutcome] = {}
        todo: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            try:
                backend = self.backend_for(job.model, job.fingerprint)
                self.check_ids(job.token_ids, backend)
                stored = self.complete(job.tenant, job.record_id, job.retain, backend.card.storage)
            except JobFailed as failed:
                outcomes[i] = refused(job, failed)
                continue
            except Exception as exc:  # Redis lost, say: this job alone
                outcomes[i] = worker_error(job, exc)
                continue
            if stored:
                outcomes[i] = JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)
            elif backend.card.storage != "hidden":
                outcomes[i] = alone(job, partial(self.run, job))
            else:
                todo.setdefault(job.model, []).append(i)
        for model, indices in todo.items():
            for group in _batches(sorted(indices, key=lambda i: len(jobs[i].token_ids)), jobs):
                outcomes.update(self._score_group([jobs[i] for i in group], group, self.backends[model]))
        return [outcomes[i] for i in range(len(jobs))]

    def _score_group(self, group: list[ScoreJob], indices: list[int], backend: Backend) -> dict[int, JobOutcome]:
        if len(group) == 1:
            return {indices[0]: alone(group[0], partial(self.run, group[0]))}
        try:
            hidden = backend.hidden_states_batch([job.token_ids for job in group])
            hidden = [states[: len(job.token_ids) - 1] for job, states in zip(group, hidden, strict=True)]
            ids = [torch.tensor(job.token_ids) for job in group]
            stats = capture_statistics_many(hidden, ids, backend.head, CAPTURE_TOPK)  # shared unembedding matmuls
        except Exception:  # e.g. out of memory for the batch: each job alone, so a bad one fails alone
            log.exception("a batched forward of %d jobs failed; running them one at a time", len(group))
            return {i: alone(job, partial(self.run, job)) for i, job in zip(indices, group, strict=True)}
        return {
            i: alone(job, partial(self.score_stored, job, backend, states, job_stats))
            for i, job, states, job_stats in zip(indices, group, hidden, stats, strict=True)
        }

    def score_stored(
        self,
        job: ScoreJob,
        backend: Backend,
        hidden: torch.Tensor | None = None,
        stats: dict[str, np.ndarray] | None = None,
    ) -> JobOutcome:
        self._capture_and_store(
            job.tenant,
            job.record_id,
            job.token_ids,
            backend,
            kind="score",
            retain=job.retain,
            n_prompt=job.n_prompt,
            hidden=hidden,
            stats=stats,
        )
        return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)

    def backend_for(self, model: str, fingerprint: str) -> Backend:
        backend = self.backends.get(model)
        if backend is None:
            raise JobFailed("model_not_served", f"this worker does not serve {model!r}", 503)
        if fingerprint != backend.card.fingerprint:
            raise JobFailed("model_changed", f"{model!r} was reloaded with other weights; retry", 409)
        return backend

    def check_ids(self, token_ids: list[int], backend: Backend) -> None:
        card = backend.card
        if len(token_ids) > card.context_length:
            raise JobFailed("context_length_exceeded", f"{len(token_ids)} tokens > context {card.context_length}")
        if min(token_ids) < 0 or max(token_ids) >= card.vocab_size:
            raise JobFailed("invalid_token_ids", f"token ids must lie in [0, {card.vocab_size})")

    # ------------------------------------------------------------ score

    def _score(self, job: ScoreJob, backend: Backend) -> JobOutcome:
        self.check_ids(job.token_ids, backend)
        if self.complete(job.tenant, job.record_id, job.retain, backend.card.storage):  # another delivery did it
            return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)
        return self.score_stored(job, backend)

    def complete(self, tenant: str, rid: str, retain: Retain = "stats", storage: str = "hidden") -> bool:
        """Whether the whole record is stored, with its full rows if `retain` is "full" (an incomplete hash is
        scored again and overwritten; a stats record asked for in full is upgraded)."""
        fields = RECORD_CORE_FIELDS + ((rows_field(storage),) if retain == "full" else ())
        pipe = self.redis.pipeline(transaction=False)
        for field in fields:
            pipe.hexists(record_key(tenant, rid), field)
        return all(pipe.execute())

    def _capture_and_store(
        self,
        tenant: str,
        rid: str,
        token_ids: list[int],
        backend: Backend,
        *,
        kind: str,
        retain: Retain,
        n_prompt: int | None = None,
        finish_reason: str | None = None,
        hidden: torch.Tensor | None = None,
        stats: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Capture the statistics of `token_ids` and store the record; `hidden`, when given, holds the hidden states
        of (at least) all their tokens but the last, the rows the record keeps, and `stats`, when given, their
        statistics already captured. With retain "stats" neither the hidden states nor the rows are sent to Redis."""
        card = backend.card
        ids = torch.tensor(token_ids)
        payload: dict[str, bytes] = {}
        if card.storage == "hidden":
            hidden = (backend.hidden_states(token_ids) if hidden is None else hidden)[: len(token_ids) - 1]
            if hidden.shape[0] != len(token_ids) - 1:
                raise RuntimeError(f"{hidden.shape[0]} hidden states for {len(token_ids)} tokens")
            if stats is None:
                stats = capture_statistics(hidden, ids, backend.head, CAPTURE_TOPK)
            if retain == "full":
                payload["hidden"] = st_save_torch({"hidden": hidden.to(STORAGE_DTYPES[card.hidden_dtype]).contiguous()})
        else:  # logits are not W·h for this model: keep its own rows, and take the statistics from them
            rows = backend.full_rows(token_ids)[:-1]
            stats = logits_statistics(rows, ids, CAPTURE_TOPK)
            if retain == "full":
                payload["rows"] = encode_arrays({"rows": rows.numpy()})
        key = record_key(tenant, rid)
        existing = self._kept_meta(key, card, token_ids)
        if existing is not None and (retain == "stats" or existing.retain == "full"):
            return  # stored meanwhile with as much as asked for (a record never loses its full rows)
        if existing is not None:  # a stats record upgraded: its rows join it, its statistics stay as they were
            self._write_record(
                key, {"meta": existing.model_copy(update={"retain": "full"}).model_dump_json(), **payload}
            )
            return
        meta = RecordMeta(
            record_id=rid,
            tenant=tenant,
            model=card.name,
            fingerprint=card.fingerprint,
            kind=kind,  # type: ignore[arg-type]
            token_ids=token_ids,
            n_prompt=n_prompt,
            finish_reason=finish_reason,
            storage=card.storage,
            hidden_dtype=card.hidden_dtype,
            topk=CAPTURE_TOPK,
            vocab_size=card.vocab_size,
            hidden_size=card.hidden_size,
            retain=retain,
        )
        self._write_record(key, {"meta": meta.model_dump_json(), "stats": encode_arrays(stats), **payload})

    def _kept_meta(self, key: str, card: ModelCard, token_ids: list[int]) -> RecordMeta | None:
        """The metadata of the whole record already stored under `key` for these tokens, if there is one (a damaged
        or partial one is None: written anew)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(key, "meta")
        pipe.hexists(key, "stats")
        pipe.hexists(key, rows_field(card.storage))
        raw_meta, has_stats, has_rows = pipe.execute()
        if raw_meta is None or not has_stats:
            return None
        try:
            meta = decode_meta(as_bytes(raw_meta) or b"")
        except ProtocolError:
            return None
        if meta.fingerprint != card.fingerprint or meta.token_ids != token_ids or (meta.retain == "full") != has_rows:
            return None
        return meta

    def _write_record(self, key: str, fields: dict[str, bytes | str]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, self.record_ttl_s)
        pipe.execute()

    # ------------------------------------------------------------ generate

    def generation_budget(self, job: GenerateJob, backend: Backend) -> Sampling:
        """The job's sampling with max_tokens bounded by the model's limits (a bad prompt raises JobFailed)."""
        self.check_ids(job.prompt_ids, backend)
        budget = self.completion_budget(job.sampling, [(backend, job.prompt_ids)])
        return job.sampling.model_copy(update={"max_tokens": budget})

    def generation_stored(
        self,
        job: GenerateJob,
        backend: Backend,
        decoded: Decoded,
        hidden: torch.Tensor | None,
        stats: dict[str, np.ndarray] | None = None,
    ) -> JobOutcome:
        rid = self.store_completion(
            job.tenant, backend, job.prompt_ids, decoded, job.retain, hidden=hidden, stats=stats
        )
        return self.completed(job, rid, decoded)

    def _contrast(self, job: ContrastJob) -> JobOutcome:
        if job.level == "byte":
            return run_byte_contrast(self, job)
        views, sampling = self.contrast_views(job)
        return self.contrast_done(job, views, decode(views, sampling, **self.contrast_options(job, views)))

    def contrast_views(self, job: ContrastJob) -> tuple[list[View], Sampling]:
        """A token-level contrastive job's views, and its sampling with max_tokens bounded by every view's model (a
        bad job raises JobFailed)."""
        views = []
        for spec in job.views:
            backend = self.backend_for(spec.model, spec.fingerprint)
            self.check_ids(spec.prefix_ids, backend)
            views.append(View(backend, spec.prefix_ids, spec.weight, spec.temperature))
        if len({view.backend.card.vocab_size for view in views}) != 1:
            raise JobFailed("tokenizer_mismatch", "the views' models do not share a vocabulary")
        if job.record_view >= len(views) or (job.plausibility is not None and job.plausibility.view >= len(views)):
            raise JobFailed("invalid_view", "record_view and plausibility.view must name one of the views")
        budget = self.completion_budget(job.sampling, [(view.backend, view.prefix_ids) for view in views])
        return views, job.sampling.model_copy(update={"max_tokens": budget})

    def contrast_done(self, job: ContrastJob, views: list[View], decoded: Decoded) -> JobOutcome:
        """A finished decoding: its record stored under the record view's model, its steps kept; the outcome."""
        shown = views[job.record_view]
        rid = self.store_completion(job.tenant, shown.backend, shown.prefix_ids, decoded, job.retain)
        self.keep_steps(job.job_id, decoded.steps)
        return self.completed(job, rid, decoded)

    def contrast_options(self, job: ContrastJob, views: list[View] | None = None) -> dict[str, Any]:
        """What either decoding loop takes from a contrastive job: the cut or USCD's rule, top-k, and the stream
        (and, given the token views, the first view's detokenizer for stop strings)."""
        channel = steps_channel(job.job_id)
        return {
            "plausibility": job.plausibility,
            "rule": job.selective,
            "topk": job.topk,
            "on_step": lambda step: self.redis.publish(channel, step.model_dump_json()),
            **({"detokenize": views[0].backend.decode} if views else {}),
        }

    def keep_steps(self, job_id: str, steps: list[DecodeStep]) -> None:
        """A contrastive job's steps, where the gateway reads them (JSON list)."""
        listed = "[" + ",".join(step.model_dump_json() for step in steps) + "]"
        self.redis.set(steps_key(job_id), listed, ex=STEPS_TTL_S)

    @staticmethod
    def completed(job: GenerateJob | ContrastJob, rid: str, decoded: Decoded) -> JobOutcome:
        return JobOutcome(
            job_id=job.job_id,
            ok=True,
            record_id=rid,
            completion_ids=decoded.completion,
            finish_reason=decoded.finish_reason,
        )

    @staticmethod
    def completion_budget(sampling: Sampling, prefixes: list[tuple[Backend, list[int]]]) -> int:
        """max_tokens, bounded by every model's limit and the room left in its context."""
        budget = min(
            [sampling.max_tokens]
            + [min(b.card.max_new_tokens, b.card.context_length - len(ids)) for b, ids in prefixes]
        )
        if budget < 1:
            raise JobFailed("context_length_exceeded", "no room left in the context for a completion")
        return budget

    def store_completion(
        self,
        tenant: str,
        backend: Backend,
        prefix: list[int],
        decoded: Decoded,
        retain: Retain,
        hidden: torch.Tensor | None = None,
        stats: dict[str, np.ndarray] | None = None,
    ) -> str:
        """Capture and store the record of prefix + completion under the backend's model (`hidden` and `stats`,
        when given, as `_capture_and_store` takes them); its id."""
        full = prefix + decoded.completion
        options = {"kind": "generate", "n_prompt": len(prefix)}
        rid = record_id(self.secret, tenant, backend.card.fingerprint, full, options)
        self._capture_and_store(
            tenant,
            rid,
            full,
            backend,
            kind="generate",
            retain=retain,
            n_prompt=len(prefix),
            finish_reason=decoded.finish_reason,
            hidden=hidden,
            stats=stats,
        )
        return rid

    # ------------------------------------------------------------ rows and cross statistics

    def _stored(self, tenant: str, rid: str, backend: Backend) -> StoredRecord:
        key = record_key(tenant, rid)
        raw_meta, hidden_blob, rows_blob = map(as_bytes, self.redis.hmget(key, ["meta", "hidden", "rows"]))
        if raw_meta is None:
            raise JobFailed("record_not_found", "record not found or expired", 404)
        try:
            meta = decode_meta(raw_meta)
        except ProtocolError as exc:
            raise JobFailed("record_corrupt", str(exc), 500) from exc
        if meta.retain == "stats":
            raise JobFailed("rows_not_retained", f"record {rid} keeps statistics only, not full rows", 409)
        n = len(meta.token_ids) - 1
        if meta.storage == "rows":
            return StoredRecord(meta, rows=_stored_rows(rows_blob, n, meta.vocab_size))
        if meta.fingerprint != backend.card.fingerprint:
            raise JobFailed("record_model_mismatch", "the record was made by other weights", 409)
        return StoredRecord(meta, hidden=_stored_hidden(hidden_blob, n, meta), head=backend.head)

    def _rows(self, job: RowsJob, backend: Backend) -> JobOutcome:
        record = self._stored(job.tenant, job.record_id, backend)
        n = len(record.meta.token_ids) - 1
        if not 1 <= job.start < job.stop <= n + 1:
            raise JobFailed("invalid_positions", f"positions must satisfy 1 <= start < stop <= {n + 1}")
        if (job.stop - job.start) * 4 * record.meta.vocab_size > MAX_BLOB_BYTES:
            raise JobFailed("export_too_large", "too many positions for one export; page with start/stop")
        out = record.logprobs(np.arange(job.start - 1, job.stop - 1))
        self.redis.set(export_key(job.job_id), encode_arrays({"logprobs": out}), ex=EXPORT_TTL_S)
        return JobOutcome(job_id=job.job_id, ok=True, record_id=job.record_id)

    def _cross(self, job: CrossJob) -> JobOutcome:
        sides = []
        for side in (job.p, job.q):
            backend = self.backend_for(side.model, side.fingerprint)
            record = self._stored(job.tenant, side.record_id, backend)
            rows = np.asarray(side.positions) - 1
            if rows.min() < 0 or rows.max() >= len(record.meta.token_ids) - 1:
                raise JobFailed("invalid_positions", f"positions of {side.record_id} out of range")
            sides.append((record, rows))
        (p, p_rows), (q, q_rows) = sides
        if len(p_rows) != len(q_rows):
            raise JobFailed("invalid_positions", "both sides need the same number of positions")
        if p.meta.vocab_size != q.meta.vocab_size:
            raise JobFailed("tokenizer_mismatch", "the two models do not share a vocabulary")
        step = max(1, chunk_rows_for(p.meta.vocab_size) // 2)
        parts = []
        for lo in range(0, len(p_rows), step):
            checkpoint()  # a slice: one chunk of rows
            p_chunk = torch.from_numpy(p.logprobs(p_rows[lo : lo + step]))
            parts.append(cross_statistics(p_chunk, torch.from_numpy(q.logprobs(q_rows[lo : lo + step]))))
        arrays = {name: np.concatenate([part[name] for part in parts]) for name in CROSS_ARRAYS}
        self.redis.set(cross_key(job.tenant, job.cross_id), encode_arrays(arrays), ex=self.record_ttl_s)
        return JobOutcome(job_id=job.job_id, ok=True)


class StoredRecord:
    """A record read back from Redis, able to give full log-probability rows for any of its positions."""

    def __init__(
        self,
        meta: RecordMeta,
        *,
        hidden: torch.Tensor | None = None,
        rows: np.ndarray | None = None,
        head: Unembedding | None = None,
    ) -> None:
        self.meta, self.hidden, self.rows, self.head = meta, hidden, rows, head

    def logprobs(self, index: np.ndarray) -> np.ndarray:
        """float32 rows [len(index), V]; row i of the record is position i+1."""
        if self.rows is not None:
            return np.asarray(self.rows[index])
        assert self.hidden is not None and self.head is not None
        return rebuild_rows(self.hidden[torch.from_numpy(index)], self.head)


def _stored_hidden(blob: bytes | None, positions: int, meta: RecordMeta) -> torch.Tensor:
    try:
        hidden = st_load_torch(blob or b"")["hidden"]
    except Exception as exc:
        raise JobFailed("record_corrupt", f"unreadable hidden states: {exc}", 500) from exc
    expected = (positions, meta.hidden_size)
    if tuple(hidden.shape) != expected or hidden.dtype != STORAGE_DTYPES[meta.hidden_dtype]:
        raise JobFailed("record_corrupt", f"hidden states {hidden.dtype}{list(hidden.shape)}", 500)
    if not torch.isfinite(hidden).all():
        raise JobFailed("record_corrupt", "hidden states hold NaN or Inf", 500)
    return hidden


def _stored_rows(blob: bytes | None, positions: int, vocab: int) -> np.ndarray:
    try:
        rows: np.ndarray = st_load_numpy(blob or b"")["rows"]
    except Exception as exc:
        raise JobFailed("record_corrupt", f"unreadable rows: {exc}", 500) from exc
    if rows.shape != (positions, vocab) or rows.dtype != np.float32:
        raise JobFailed("record_corrupt", f"rows {rows.dtype}{list(rows.shape)}", 500)
    if not np.isfinite(rows).all():
        raise JobFailed("record_corrupt", "rows hold NaN or Inf", 500)
    return rows


def _batches(order: list[int], jobs: list[ScoreJob]) -> list[list[int]]:
    """Job indices, shortest first, cut into groups whose padded size stays within BATCH_TOKENS."""
    groups: list[list[int]] = []
    for i in order:
        width = len(jobs[i].token_ids)  # the longest so far: the order is by length
        if groups and width * (len(groups[-1]) + 1) <= BATCH_TOKENS:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
