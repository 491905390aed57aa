"""Records as workers write and read them: capture a token sequence's statistics (and, when kept, its final hidden
states or full rows) under its content-addressed key, upgrade a stats record to full, read one back for rows."""

from __future__ import annotations

import time

import numpy as np
import redis
import torch
from safetensors.numpy import load as st_load_numpy
from safetensors.torch import load as st_load_torch
from safetensors.torch import save as st_save_torch

from workers.backends.base import Backend
from workers.capture import Unembedding, capture_statistics, logits_statistics, rebuild_rows
from workers.contract.cards import ModelCard
from workers.contract.keys import record_key
from workers.contract.names import CAPTURE_TOPK, ProtocolError, Retain, as_bytes, record_id
from workers.contract.records import (
    RECORD_CORE_FIELDS,
    RecordMeta,
    decode_meta,
    encode_arrays,
    layer_field,
    rows_field,
)
from workers.contract.usage import count_record_bytes
from workers.decoding import Decoded
from workers.outcomes import JobFailed
from workers.probe import STORAGE_DTYPES


class RecordWriter:
    """Stores records in Redis under the deployment's secret (record ids) and record lifetime."""

    def __init__(self, client: redis.Redis, secret: bytes, record_ttl_s: int) -> None:
        self.redis = client
        self.secret = secret
        self.record_ttl_s = record_ttl_s

    def complete(
        self,
        tenant: str,
        rid: str,
        retain: Retain = "stats",
        storage: str = "hidden",
        layers: tuple[list[int], int | None] = ([], None),
    ) -> bool:
        """Whether the whole record is stored, with its full rows if `retain` is "full" and the states of `layers`
        (the asked hidden_states indices, and the model's final one) (an incomplete hash is scored again and
        overwritten; a stats record asked for in full is upgraded)."""
        fields = RECORD_CORE_FIELDS + ((rows_field(storage),) if retain == "full" else ())
        asked, final_layer = layers
        fields += tuple(layer_field(layer, final_layer) for layer in asked if final_layer is not None)
        pipe = self.redis.pipeline(transaction=False)
        for field in fields:
            pipe.hexists(record_key(tenant, rid), field)
        return all(pipe.execute())

    def capture_and_store(
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
        layers: list[int] | None = None,
    ) -> None:
        """Capture the statistics of `token_ids` and store the record; `hidden`, when given, holds the hidden states
        of (at least) all their tokens but the last, the rows the record keeps, and `stats`, when given, their
        statistics already captured. With retain "stats" neither the hidden states nor the rows are sent to Redis.
        `layers` (hidden_states indices): their states are kept too, from the same forward (`layer_payload`)."""
        card = backend.card
        ids = torch.tensor(token_ids)
        payload: dict[str, bytes] = {}
        if layers:
            hidden, payload = layer_payload(backend, token_ids, layers)
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
                tenant, key, {"meta": existing.model_copy(update={"retain": "full"}).model_dump_json(), **payload}
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
            layers=layers or [],
            n_layers=card.layers if layers else None,
        )
        self._write_record(tenant, key, {"meta": meta.model_dump_json(), "stats": encode_arrays(stats), **payload})

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

    def _write_record(self, tenant: str, key: str, fields: dict[str, bytes | str]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, self.record_ttl_s)
        pipe.execute()
        usage = self.redis.pipeline(transaction=False)  # its own slots (the tenant's, and the sweep's list)
        count_record_bytes(usage, tenant, sum(map(len, fields.values())), time.time(), self.record_ttl_s)
        usage.execute()

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
        when given, as `capture_and_store` takes them); its id."""
        full = prefix + decoded.completion
        options = {"kind": "generate", "n_prompt": len(prefix)}
        rid = record_id(self.secret, tenant, backend.card.fingerprint, full, options)
        self.capture_and_store(
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

    def stored(self, tenant: str, rid: str, backend: Backend) -> StoredRecord:
        """A kept record, able to give full rows (404 gone, 409 stats only or other weights)."""
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


def layer_payload(backend: Backend, token_ids: list[int], layers: list[int]) -> tuple[torch.Tensor, dict[str, bytes]]:
    """One forward's final hidden states [T, d] and the record fields of `layers`' states (rows of all tokens but the
    last, as `hidden`: safetensors in the model's dtype; the final layer's are `hidden` itself). 501 for a backend
    that does not expose its layers."""
    card = backend.card
    states_with_layers = getattr(backend, "states_with_layers", None)
    if card.layers is None or states_with_layers is None or card.storage != "hidden":
        raise JobFailed(
            "layers_unsupported", f"{card.name!r}'s backend ({card.backend}) does not keep its layers' states", 501
        )
    if not all(0 <= layer <= card.layers for layer in layers):
        raise JobFailed("invalid_layers", f"layers lie in [0, {card.layers}] ({card.name!r} has {card.layers} layers)")
    dtype = STORAGE_DTYPES[card.hidden_dtype]
    final, states = states_with_layers(token_ids, layers)
    rows = len(token_ids) - 1
    payload = {
        layer_field(layer, card.layers): st_save_torch({"hidden": state[:rows].to(dtype).contiguous()})
        for layer, state in zip(layers, states, strict=True)
        if layer != card.layers
    }
    return final, payload


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
