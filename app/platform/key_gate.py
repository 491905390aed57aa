"""ASGI middleware: a request for a route that needs an API key and presents no valid one is answered 401 at
once, before its body is read and before it holds any place in the gateway (`InflightLimit`), so callers without
a key cannot crowd out those with one. Routes that need no key (the page, health, docs) pass as before.

Which routes need a key is read from the routes themselves (those that depend on `current_tenant`: see
`public_routes`); the routes still authenticate on their own.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.platform.auth import KeyRing, current_tenant, unauthorized
from app.platform.limits import presented_key


def needs_key(dependant: Dependant) -> bool:
    return dependant.call is current_tenant or any(needs_key(d) for d in dependant.dependencies)


def public_routes(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """The plain routes among `routes` that any caller may reach: those whose dependencies do not name the
    tenant. (Pass the routers' own routes: an app's included routers are not plain routes.)"""
    return [r for r in routes if isinstance(r, Route) and not (isinstance(r, APIRoute) and needs_key(r.dependant))]


class KeyGate:
    def __init__(self, app: ASGIApp, keys: KeyRing, public: list[BaseRoute]) -> None:
        self.app, self.keys, self.public = app, keys, public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await unauthorized().response()(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        key = presented_key(scope)
        if key and self.keys.tenant_for(key) is not None:
            return True
        return any(route.matches(scope)[0] == Match.FULL for route in self.public)
