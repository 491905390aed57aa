"""The gateway's shared services, built once per app (routes reach them through `app.api.deps.ServicesDep`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from app.platform.auth import KeyRing
from app.platform.leases import LeasedWork
from app.platform.settings import Settings
from app.serving.catalog import ModelCatalog
from app.serving.frequencies import FrequencyTables
from app.serving.jobs import JobQueue
from app.serving.store import RecordStore
from app.serving.usage import ObjectQuota, RecordQuota
from workers.contract.keys import SECRET_KEY
from workers.contract.names import as_bytes, new_secret
from workers.redis_client import connect_async


@dataclass
class Services:
    settings: Settings
    redis: Redis
    catalog: ModelCatalog
    jobs: JobQueue
    store: RecordStore
    keys: KeyRing
    frequencies: FrequencyTables
    objects: ObjectQuota
    preparations: LeasedWork = field(init=False)  # heads being prepared (set by the app's lifespan)
    _secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set (logprobe serve starts an embedded Redis for you)")
        redis = connect_async(
            settings.redis_url, settings.redis_cluster, health_check_interval=30, **settings.redis_auth()
        )
        return cls(
            settings=settings,
            redis=redis,
            catalog=ModelCatalog(redis, settings.models),
            jobs=JobQueue(
                redis,
                settings.job_timeout_s,
                settings.max_queue_depth,
                settings.tenant_share,
                RecordQuota(settings.max_record_bytes_per_tenant, settings.record_ttl_s),
            ),
            store=RecordStore(redis),
            keys=KeyRing(settings.api_keys),
            frequencies=FrequencyTables(redis, ObjectQuota(settings.max_object_bytes_per_tenant)),
            objects=ObjectQuota(settings.max_object_bytes_per_tenant),
        )

    async def secret(self) -> bytes:
        """The deployment's HMAC secret: from settings, else the one kept in Redis (made by whoever came first)."""
        if self._secret is None:
            if self.settings.secret:
                self._secret = self.settings.secret.encode()
            else:
                await self.redis.set(SECRET_KEY, new_secret(), nx=True)
                self._secret = as_bytes(await self.redis.get(SECRET_KEY)) or b""
        return self._secret
