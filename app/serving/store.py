"""Reading records from Redis, validated on the way in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import numpy as np
from redis.asyncio import Redis

from app.platform.errors import ApiError
from workers.contract.keys import export_key, record_key
from workers.contract.lifetimes import forget
from workers.contract.names import ProtocolError, as_bytes, valid_record_id
from workers.contract.records import RecordMeta, decode_meta, decode_stats, hidden_float32

log = logging.getLogger("app.serving.store")
EXPORT_CHUNK = 1 << 20  # bytes of an export read from Redis and sent at a time


class RecordStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def meta(self, tenant: str, record_id: str) -> RecordMeta:
        _check_id(record_id)
        raw = await self.redis.hget(record_key(tenant, record_id), "meta")
        return self._meta(as_bytes(raw), record_id)

    async def read(self, tenant: str, record_id: str) -> tuple[RecordMeta, dict[str, np.ndarray]] | None:
        """Metadata and per-position statistics, or None when the record is gone (expired, evicted) or lacks either."""
        _check_id(record_id)
        replies = await self.redis.hmget(record_key(tenant, record_id), ["meta", "stats"])
        raw_meta, raw_stats = map(as_bytes, replies)
        if raw_meta is None or raw_stats is None:
            return None
        meta = self._meta(raw_meta, record_id)
        try:
            return meta, decode_stats(raw_stats, len(meta.token_ids) - 1, meta.topk)
        except ProtocolError as exc:
            log.error("record %s rejected: %s", record_id, exc)
            raise ApiError(500, "record_corrupt", "the stored record failed validation") from exc

    async def require(self, tenant: str, record_id: str) -> tuple[RecordMeta, dict[str, np.ndarray]]:
        found = await self.read(tenant, record_id)
        if found is None:
            raise ApiError(404, "record_not_found", f"record {record_id!r} not found", "record_id")
        return found

    async def hidden_blob(self, tenant: str, meta: RecordMeta) -> bytes:
        """The record's stored final hidden states (safetensors, the model's dtype); 422 for a record kept as rows,
        409 for one that keeps statistics only."""
        require_rows(meta)
        if meta.storage != "hidden":
            raise ApiError(
                422,
                "hidden_states_not_stored",
                f"{meta.model} keeps full rows, not hidden states (its logits are not W·h)",
                "record_id",
            )
        blob = as_bytes(await self.redis.hget(record_key(tenant, meta.record_id), "hidden"))
        if blob is None:
            raise ApiError(404, "record_not_found", f"record {meta.record_id!r} not found", "record_id")
        return blob

    async def hidden(self, tenant: str, meta: RecordMeta) -> np.ndarray:
        """The record's final hidden states as float32 [positions, hidden size], validated."""
        try:
            hidden = hidden_float32(await self.hidden_blob(tenant, meta))
        except ProtocolError as exc:
            raise ApiError(500, "record_corrupt", "the stored record failed validation") from exc
        if hidden.shape != (len(meta.token_ids) - 1, meta.hidden_size) or not np.isfinite(hidden).all():
            log.error("record %s rejected: hidden states %s", meta.record_id, hidden.shape)
            raise ApiError(500, "record_corrupt", "the stored record failed validation")
        return hidden

    async def export_size(self, job_id: str) -> int:
        """The bytes a worker left for an export (0: none, or expired)."""
        return int(await self.redis.strlen(export_key(job_id)))

    async def export_chunks(self, job_id: str, size: int) -> AsyncIterator[bytes]:
        """An export's bytes in EXPORT_CHUNK pieces, each read from Redis when the client has taken the one before:
        the gateway holds one piece per export, however large it is and however slowly it is read. The export is
        deleted after (also when its client leaves)."""
        try:
            for lo in range(0, size, EXPORT_CHUNK):
                piece = await self.redis.getrange(export_key(job_id), lo, min(size, lo + EXPORT_CHUNK) - 1)
                yield as_bytes(piece) or b""
        finally:
            with anyio.CancelScope(shield=True):
                pipe = self.redis.pipeline(transaction=False)
                forget(pipe, export_key(job_id))
                await pipe.execute()

    @staticmethod
    def _meta(raw: bytes | None, record_id: str) -> RecordMeta:
        if raw is None:
            raise ApiError(404, "record_not_found", f"record {record_id!r} not found", "record_id")
        try:
            return decode_meta(raw)
        except ProtocolError as exc:
            log.error("record %s rejected: %s", record_id, exc)
            raise ApiError(500, "record_corrupt", "the stored record failed validation") from exc


def require_rows(meta: RecordMeta) -> None:
    """409 rows_not_retained unless the record keeps what rebuilds its full rows (retain "full")."""
    if meta.retain != "full":
        raise ApiError(
            409,
            "rows_not_retained",
            f"record {meta.record_id} keeps statistics and top-k only (retain 'stats'), not full rows; ask again with "
            "retain 'full' (or upgrade=true on /logprobs and /hidden) to re-score it with full rows",
            "record_id",
        )


def _check_id(record_id: str) -> None:
    """An id that no record can have is not found (and never becomes part of a key)."""
    if not valid_record_id(record_id):
        raise ApiError(404, "record_not_found", f"record {record_id!r} not found", "record_id")
