"""A head's training inputs, read from the stored records: per example the per-position features of its span
(`workers.contract.head_features`: `pawn_features` / `los_features`, the same the gateway computes) and, for the
kinds that need them, the final hidden states."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import redis

from workers.contract.head_features import los_features, pawn_features
from workers.contract.heads import probe_layers
from workers.contract.jobs import HeadExample, HeadJob
from workers.contract.keys import record_key
from workers.contract.names import ProtocolError, as_bytes
from workers.contract.records import RecordMeta, decode_meta, decode_stats, hidden_float32, layer_field
from workers.lanes import checkpoint


class HeadInputError(Exception):
    """Training inputs that cannot be used as given: the head fails with this code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Example:
    label: int
    positions: np.ndarray  # [T] int64, the positions t of the span
    feats: np.ndarray  # [T, F] float32: PAWN's token features, or LOS's output signature
    hidden: np.ndarray | None = None  # pawn: [T + 1, D] float32, row i the state that predicted position t_i;
    # row T the state after the last position (zeros when the record ends there)
    pooled: np.ndarray | None = None  # probe: [D] float32, or [C, D] over the candidate layers of layer "best";
    # stack: [F] float32 feature values (NaN: undefined)


def example_inputs(
    kind: str,
    label: int,
    stats: dict[str, np.ndarray],
    hidden: np.ndarray | None,
    start: int,
    stop: int,
    params: dict[str, float | int | str],
) -> Example:
    """One example's inputs for positions [start, stop) of a record (stats and hidden rows: row t-1 is t; a probe's
    `hidden` may be [C, rows, D], the states of C layers, pooled each)."""
    max_positions = int(params.get("max_positions", 1 << 30))
    stop = min(stop, start + max_positions)
    positions = np.arange(start, stop)
    rows = positions - 1
    if kind == "los":
        return Example(label, positions, los_features(stats, rows, int(params["topk"])))
    assert hidden is not None
    if kind == "probe":
        states = hidden[..., rows, :]
        pooled = states.mean(axis=-2) if params.get("pool", "mean") == "mean" else states[..., -1, :]
        return Example(label, positions, np.zeros((0, 0), np.float32), pooled=pooled.astype(np.float32))
    ext = np.zeros((len(rows) + 1, hidden.shape[1]), dtype=np.float32)
    ext[: len(rows)] = hidden[rows]
    if rows[-1] + 1 < len(hidden):
        ext[-1] = hidden[rows[-1] + 1]
    return Example(label, positions, pawn_features(stats, rows), hidden=ext)


def stack_example(example: HeadExample) -> Example:
    """A stack head's example: its feature values, NaN where a value was undefined."""
    if example.features is None:
        raise HeadInputError("invalid_features", "a stack head's examples carry their feature values")
    values = np.array([np.nan if v is None else v for v in example.features], dtype=np.float32)
    return Example(example.label, np.zeros(0, np.int64), np.zeros((0, 0), np.float32), pooled=values)


def unique_examples(job: HeadJob) -> list[HeadExample]:
    """The job's examples with exact duplicates (same record, span and label) dropped: each is trained once."""
    return list({(e.record_id, e.start, e.stop, e.label): e for e in job.examples}.values())


def read_examples(client: redis.Redis, job: HeadJob, params: dict[str, float | int | str]) -> list[Example]:
    """Each distinct example's inputs. Records are read one at a time and each once, however many examples name
    it; only the examples' own rows are kept (a record's hidden states are dropped once its examples are built)."""
    needs_hidden = job.head_kind in ("pawn", "probe")
    examples = unique_examples(job)
    if job.head_kind == "stack":  # the gateway computed the features: no record is read
        return [stack_example(e) for e in examples]
    by_record: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_record.setdefault(example.record_id, []).append(i)
    out: list[Example | None] = [None] * len(examples)
    for record_id, indices in by_record.items():
        checkpoint()  # a slice: one record read
        meta, stats, hidden = _read_record(client, job, record_id, needs_hidden, params)
        for i in indices:
            example = examples[i]
            if not 1 <= example.start < example.stop <= len(meta.token_ids):
                raise HeadInputError("invalid_span", f"positions [{example.start}, {example.stop}) outside the record")
            out[i] = example_inputs(job.head_kind, example.label, stats, hidden, example.start, example.stop, params)
    return [e for e in out if e is not None]


def _read_record(
    client: redis.Redis, job: HeadJob, record_id: str, needs_hidden: bool, params: dict[str, float | int | str]
) -> tuple[RecordMeta, dict[str, np.ndarray], np.ndarray | None]:
    key = record_key(job.tenant, record_id)
    layered = job.head_kind == "probe" and params.get("layer", "final") != "final"
    fields = ["meta", "stats", "hidden"] if needs_hidden and not layered else ["meta", "stats"]
    raw = [as_bytes(v) for v in client.hmget(key, fields)]
    if raw[0] is None or raw[1] is None:
        raise HeadInputError("unknown_record", f"record {record_id} is gone (expired or evicted)")
    try:
        meta = decode_meta(raw[0])
        stats = decode_stats(raw[1], len(meta.token_ids) - 1, meta.topk)
        hidden: np.ndarray | None
        if layered:
            hidden = _layer_states(client, key, meta, params["layer"])
        else:
            hidden = hidden_float32(raw[2]) if needs_hidden and raw[2] is not None else None
    except ProtocolError as exc:
        raise HeadInputError("record_corrupt", f"record {record_id}: {exc}") from exc
    if meta.fingerprint != job.fingerprint:
        raise HeadInputError("mixed_models", f"record {record_id} was made by other weights")
    if needs_hidden and meta.retain == "stats":
        raise HeadInputError(
            "rows_not_retained",
            f"a {job.head_kind} head needs final hidden states; record {record_id} keeps statistics only",
        )
    if needs_hidden and hidden is None:
        raise HeadInputError(
            "hidden_states_not_stored",
            f"a {job.head_kind} head needs final hidden states; {meta.model} stores full rows instead",
        )
    if job.head_kind == "los" and int(params["topk"]) > meta.topk:
        raise HeadInputError("invalid_params", f"topk is at most {meta.topk}, the captured alternatives")
    return meta, stats, hidden


def _layer_states(client: redis.Redis, key: str, meta: RecordMeta, layer: float | int | str) -> np.ndarray:
    """A probe's states of its layer(s) (params.layer an index or "best") from a record scored with them, float32
    [C, positions, D] in probe_layers' order; HeadInputError layer_not_stored where the record lacks one."""
    wanted = [] if meta.n_layers is None else probe_layers(layer, meta.n_layers)
    if not wanted or not set(wanted) <= set(meta.layers):
        raise HeadInputError(
            "layer_not_stored",
            f"a probe on layer {layer!r} reads that layer's states; record {meta.record_id} keeps layers {meta.layers}",
        )
    assert meta.n_layers is not None
    blobs = client.hmget(key, [layer_field(one, meta.n_layers) for one in wanted])
    if any(blob is None for blob in blobs):
        raise HeadInputError("unknown_record", f"record {meta.record_id} is gone (expired or evicted)")
    states = np.stack([hidden_float32(as_bytes(blob) or b"") for blob in blobs])
    if states.shape[1:] != (len(meta.token_ids) - 1, meta.hidden_size) or not np.isfinite(states).all():
        raise ProtocolError(f"layer states of shape {list(states.shape)}")
    return states
