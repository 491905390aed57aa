"""ASGI middleware: a request for a route that needs an API key and presents no valid one is answered 401 at
once, before its body is read and before it holds any place in the gateway (`InflightLimit`), so callers without
a key cannot crowd out those with one. Routes that need no key (the page, health, docs) pass as before.

Which routes need a key is read from the routes themselves (those that depend on `current_tenant`), once, at the
first request; the routes still authenticate on their own.
"""

from __future__ import annotations

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from app.platform.auth import KeyRing, current_tenant, unauthorized
from app.platform.limits import presented_key


def needs_key(dependant: Dependant) -> bool:
    return dependant.call is current_tenant or any(needs_key(d) for d in dependant.dependencies)


class KeyGate:
    def __init__(self, app: ASGIApp, keys: KeyRing, router: Router) -> None:
        self.app, self.keys, self.router = app, keys, router
        self._public: list[BaseRoute] | None = None

    def public(self) -> list[BaseRoute]:
        """The routes any caller may reach (read once: every route is in place by the first request)."""
        if self._public is None:
            self._public = [r for r in self.router.routes if not (isinstance(r, APIRoute) and needs_key(r.dependant))]
        return self._public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await unauthorized().response()(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        key = presented_key(scope)
        if key and self.keys.tenant_for(key) is not None:
            return True
        return any(route.matches(scope)[0] == Match.FULL for route in self.public())
