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


def _same_key(presented: str, expected: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def metrics_access(request: Request) -> None:
    """/metrics counts every tenant's work: with API keys on, only LOGPROBE_METRICS_KEY opens it (a tenant's key
    does not), unless LOGPROBE_PUBLIC_METRICS=true; with keys off (an anonymous service) it is open."""
    settings = request.app.state.services.settings
    ring: KeyRing = request.app.state.keys
    if settings.public_metrics or not ring.enabled:
        return
    key = bearer_key(request.headers.get("authorization", ""))
    expected = settings.metrics_key.get_secret_value() if settings.metrics_key is not None else ""
    if key and expected and _same_key(key, expected):
        return
    raise ApiError(
        401,
        "invalid_api_key",
        "/metrics needs the metrics key (Authorization: Bearer <LOGPROBE_METRICS_KEY>); API keys do not open it, "
        "and LOGPROBE_PUBLIC_METRICS=true opens it to anyone",
        headers={"WWW-Authenticate": "Bearer"},
    )


def docs_access(request: Request) -> None:
    """/docs, /redoc and /openapi.json: any valid API key, unless LOGPROBE_PUBLIC_DOCS=true (or keys are off)."""
    if not request.app.state.services.settings.public_docs:
        authenticate(request)


def creator(request: Request) -> str:
    """Who makes something (a calibration, a head), as listings show it: "key " and the first 8 hex digits of the
    key's sha256 (never the key), or "anonymous" on a service without keys, where every caller is one tenant."""
    key = bearer_key(request.headers.get("authorization", ""))
    ring: KeyRing = request.app.state.keys
    if not ring.enabled or not key:
        return "anonymous"
    return "key " + hashlib.sha256(key.encode()).hexdigest()[:8]


async def current_tenant(request: Request) -> str:
    """The caller's tenant; one request counted against its per-minute limit (once per request)."""
    if not hasattr(request.state, "tenant"):
        request.state.tenant = authenticate(request)
        services = request.app.state.services
        await charge(services.redis, request.state.tenant, "requests", 1, services.settings.rate_limit_rpm)
    tenant: str = request.state.tenant
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
CreatorDep = Annotated[str, Depends(creator)]
