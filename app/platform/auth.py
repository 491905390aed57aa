"""API keys → tenants. Keys are kept as sha256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.platform.errors import ApiError
from app.platform.limits import bearer_key, charge

PUBLIC_TENANT = "public"


class KeyRing:
    def __init__(self, keys: dict[str, str]) -> None:
        self._digests = [(hashlib.sha256(k.encode()).digest(), tenant) for k, tenant in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def tenant_for(self, key: str) -> str | None:
        presented = hashlib.sha256(key.encode()).digest()
        found = None
        for digest, tenant in self._digests:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(digest, presented):
                found = tenant
        return found


def authenticate(request: Request) -> str:
    ring: KeyRing = request.app.state.keys
    if not ring.enabled:
        return PUBLIC_TENANT
    key = bearer_key(request.headers.get("authorization", ""))
    tenant = ring.tenant_for(key) if key else None
    if tenant is None:
        raise unauthorized()
    return tenant


def unauthorized() -> ApiError:
    """The answer to a request that needs an API key and presents no valid one."""
    return ApiError(
        401,
        "invalid_api_key",
        "a valid API key is required (Authorization: Bearer <key>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def current_tenant(request: Request) -> str:
    """The caller's tenant; one request counted against its per-minute limit (once per request)."""
    if not hasattr(request.state, "tenant"):
        request.state.tenant = authenticate(request)
        services = request.app.state.services
        await charge(services.redis, request.state.tenant, "requests", 1, services.settings.rate_limit_rpm)
    tenant: str = request.state.tenant
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
