"""Reference token-frequency tables (for DC-PDD), per tokenizer: a default one counted from text that ships
in packages, and tables that tenants count from their own corpora (with a lifetime, a per-tenant quota and an
index per tenant for listing)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from redis.asyncio import Redis
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from app.platform.errors import ApiError
from app.serving import corpus, quotas
from app.serving.text import TextCodec
from app.serving.usage import ObjectQuota
from workers.contract.keys import tenant_tag
from workers.contract.names import as_bytes
from workers.contract.usage import object_usage_key

DEFAULT_TABLE = "default"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def table_key(tenant: str, tokenizer_id: str, name: str) -> str:
    owner = "_packaged" if name == DEFAULT_TABLE else tenant
    return f"lp:freq:{tenant_tag(owner)}:{tokenizer_id}:{name}"


def index_key(tenant: str) -> str:
    return f"lp:freq-index:{tenant_tag(tenant)}"


def entry_name(tokenizer_id: str, name: str) -> str:
    return f"{tokenizer_id}:{name}"


def key_of(tenant: str) -> Callable[[str], str]:
    """The table key of an index entry's name."""
    return lambda entry: table_key(tenant, *entry.split(":", 1))


def not_found(name: str, model: str | None = None, param: str = "frequency_table") -> ApiError:
    """404 for a table the tenant does not have; `param` is the field that named it (`name` in a path)."""
    where = f" for {model!r}" if model else ""
    return ApiError(404, "frequency_table_not_found", f"no frequency table {name!r}{where}", param)


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
    def __init__(self, redis: Redis, objects: ObjectQuota | None = None) -> None:
        self.redis = redis
        self.objects = objects or ObjectQuota(0)
        self._lock = asyncio.Lock()

    async def build(self, tenant: str, codec: TextCodec, name: str, texts: list[str]) -> dict[str, Any]:
        """Count `texts` and keep the table (replacing one of the same name and tokenizer) for OBJECT_TTL_S."""
        if not NAME_PATTERN.match(name) or name == DEFAULT_TABLE:
            raise ApiError(
                422,
                "invalid_table_name",
                f"table names match {NAME_PATTERN.pattern} and are not {DEFAULT_TABLE!r}",
                "name",
            )
        limit, index, entry = quotas.MAX_TABLES_PER_TENANT, index_key(tenant), entry_name(codec.tokenizer_id, name)
        if not await self.redis.hexists(index, entry):
            await quotas.check_room(self.redis, index, limit, "frequency_tables", key_of(tenant))
        counts = await asyncio.to_thread(count_tokens, codec, texts)
        deadline = quotas.expires_at()
        info = {
            "name": name,
            "model": codec.card.name,
            "texts": len(texts),
            "tokens": int(counts.sum()),
            "distinct_tokens": int((counts > 0).sum()),
            "tokenizer_id": codec.tokenizer_id,
            "packaged": False,
            "created_at": int(time.time()),
            "expires_at": deadline,
        }
        key = table_key(tenant, codec.tokenizer_id, name)
        blob = st_save({"counts": counts})
        replaced = int(await self.redis.strlen(key))
        await self.objects.check(self.redis, tenant, len(blob) - replaced)  # before the old one is replaced
        await quotas.store_durable(self.redis, key, blob, deadline)
        try:
            await self.objects.record(self.redis, tenant, key, len(blob))
            await quotas.claim(self.redis, index, entry, info, limit, "frequency_tables", key_of(tenant))
        except ApiError:
            await self.redis.delete(key)
            await self.objects.release(self.redis, tenant, key)
            raise
        return info

    async def tables(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's tables, newest first."""
        live = await quotas.live_entries(self.redis, index_key(tenant), key_of(tenant))
        return sorted(live.values(), key=lambda t: (-t["created_at"], t["name"]))

    async def named(self, tenant: str, name: str, tokenizer_id: str | None = None) -> list[dict[str, Any]]:
        """The tenant's tables called `name` (one per tokenizer), or only the one for `tokenizer_id`."""
        found = [t for t in await self.tables(tenant) if t["name"] == name]
        return [t for t in found if tokenizer_id is None or t["tokenizer_id"] == tokenizer_id]

    async def delete(self, tenant: str, name: str, tokenizer_id: str | None = None) -> int:
        """Delete the tables called `name` (for one tokenizer, or all); how many there were."""
        found = await self.named(tenant, name, tokenizer_id)
        if found:
            pipe = self.redis.pipeline(transaction=True)
            for table in found:
                pipe.delete(table_key(tenant, table["tokenizer_id"], name))
                pipe.hdel(index_key(tenant), entry_name(table["tokenizer_id"], name))
                pipe.hdel(object_usage_key(tenant), table_key(tenant, table["tokenizer_id"], name))
            await pipe.execute()
        return len(found)

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
            raise not_found(name, codec.card.name)
        counts = st_load(raw)["counts"]
        if counts.shape != (codec.card.vocab_size,) or counts.dtype != np.int64 or (counts < 0).any():
            raise ApiError(500, "frequency_table_corrupt", "the stored frequency table failed validation")
        return smoothed(counts)
