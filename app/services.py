"""The gateway's shared services, built once per app and reached from routes through `ServicesDep`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from app.auth import KeyRing
from app.catalog import ModelCatalog
from app.frequencies import FrequencyTables
from app.jobs import JobQueue
from app.settings import Settings
from app.store import RecordStore
from workers.protocol import SECRET_KEY, as_bytes, new_secret


@dataclass
class Services:
    settings: Settings
    redis: Redis
    catalog: ModelCatalog
    jobs: JobQueue
    store: RecordStore
    keys: KeyRing
    frequencies: FrequencyTables
    _secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set (logprobe serve starts an embedded Redis for you)")
        redis = Redis.from_url(settings.redis_url, health_check_interval=30)
        return cls(
            settings=settings,
            redis=redis,
            catalog=ModelCatalog(redis, settings.models),
            jobs=JobQueue(redis, settings.job_timeout_s, settings.max_queue_depth),
            store=RecordStore(redis),
            keys=KeyRing(settings.api_keys),
            frequencies=FrequencyTables(redis),
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


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
