"""Reference token-frequency tables (for DC-PDD), per tokenizer: a default one counted from text that ships
in packages, and tables that tenants count from their own corpora."""

from __future__ import annotations

import asyncio
import re

import numpy as np
from redis.asyncio import Redis
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from app.platform.errors import ApiError
from app.serving import corpus
from app.serving.text import TextCodec
from workers.protocol import as_bytes

DEFAULT_TABLE = "default"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def table_key(tenant: str, tokenizer_id: str, name: str) -> str:
    owner = "_packaged" if name == DEFAULT_TABLE else tenant
    return f"lp:freq:{owner}:{tokenizer_id}:{name}"


def count_tokens(codec: TextCodec, texts: list[str]) -> np.ndarray:
    counts = np.zeros(codec.card.vocab_size, dtype=np.int64)
    for start in range(0, len(texts), 512):
        for encoding in codec.tokenizer.encode_batch(texts[start : start + 512], add_special_tokens=False):
            ids = np.asarray(encoding.ids, dtype=np.int64)
            counts += np.bincount(ids[ids < len(counts)], minlength=len(counts))
    return counts


def smoothed(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothing, as DC-PDD does: (count + 1) / (total + V)."""
    return np.asarray((counts.astype(np.float64) + 1.0) / (counts.sum() + len(counts)))


class FrequencyTables:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._lock = asyncio.Lock()

    async def build(self, tenant: str, codec: TextCodec, name: str, texts: list[str]) -> dict[str, int | str]:
        if not NAME_PATTERN.match(name) or name == DEFAULT_TABLE:
            raise ApiError(
                422,
                "invalid_table_name",
                f"table names match {NAME_PATTERN.pattern} and are not {DEFAULT_TABLE!r}",
                "name",
            )
        counts = await asyncio.to_thread(count_tokens, codec, texts)
        await self.redis.set(table_key(tenant, codec.tokenizer_id, name), st_save({"counts": counts}))
        return {
            "name": name,
            "model": codec.card.name,
            "texts": len(texts),
            "tokens": int(counts.sum()),
            "distinct_tokens": int((counts > 0).sum()),
        }

    async def probabilities(self, tenant: str, codec: TextCodec, name: str) -> np.ndarray:
        key = table_key(tenant, codec.tokenizer_id, name)
        raw = as_bytes(await self.redis.get(key))
        if raw is None and name == DEFAULT_TABLE:
            async with self._lock:  # count the packaged corpus once
                raw = as_bytes(await self.redis.get(key))
                if raw is None:
                    counts = await asyncio.to_thread(count_tokens, codec, corpus.reference_corpus())
                    raw = st_save({"counts": counts})
                    await self.redis.set(key, raw)
        if raw is None:
            raise ApiError(
                404,
                "frequency_table_not_found",
                f"no frequency table {name!r} for {codec.card.name!r}",
                "frequency_table",
            )
        counts = st_load(raw)["counts"]
        if counts.shape != (codec.card.vocab_size,) or counts.dtype != np.int64 or (counts < 0).any():
            raise ApiError(500, "frequency_table_corrupt", "the stored frequency table failed validation")
        return smoothed(counts)
