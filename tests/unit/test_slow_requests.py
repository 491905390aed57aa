"""Slow requests on real ASGI (#30 item 1): a body that never ends is a 408, a body still arriving is not work,
and the routes that need no key are exactly the public ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

from app.api.gateway import ROUTERS, create_app
from app.platform.body_deadline import BodyDeadline
from app.platform.key_gate import KeyGate, public_routes
from app.platform.limits import InflightLimit
from app.platform.settings import Settings


async def echo_size(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


def body_until(event: asyncio.Event) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        await event.wait()
        yield b'"}'

    return chunks()


async def test_a_body_that_never_ends_is_a_408_body_timeout() -> None:
    app = BodyDeadline(Router(routes=[Route("/echo", echo_size, methods=["POST"])]), timeout_s=0.2)
    never = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client:
        response = await client.post("/echo", content=body_until(never))
        assert response.status_code == 408 and response.headers["connection"] == "close"
        assert response.json()["error"]["code"] == "body_timeout"
        assert (await client.post("/echo", content=b"whole")).json() == {"size": 5}  # a body that came: served


async def test_requests_waiting_for_their_body_are_not_at_work() -> None:
    """busy_limit 2: three requests whose bodies are still coming leave room for a fourth (was: 429 overloaded)."""
    app = Starlette(routes=[Route("/echo", echo_size, methods=["POST"])])
    limited = InflightLimit(app, limit=10, busy_limit=2, caller_limit=10)
    arrive = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(limited), base_url="http://gateway") as client:
        slow = [asyncio.create_task(client.post("/echo", content=body_until(arrive))) for _ in range(3)]
        while limited.active < 3 and not any(task.done() for task in slow):  # all in, or one refused
            await asyncio.sleep(0.01)
        quick = await client.post("/echo", content=b"{}")
        assert quick.status_code == 200, quick.text
        arrive.set()
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 3
    assert (limited.active, limited.busy) == (0, 0)


def test_the_routes_open_without_a_key_are_the_public_ones() -> None:
    app = create_app(Settings(api_keys={"key": "tenant"}))
    public = public_routes([*app.router.routes, *(route for router in ROUTERS for route in router.routes)])
    paths = {getattr(route, "path", "") for route in public}
    docs = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    assert paths == {"/", "/web/{path:path}", "/favicon.ico", "/healthz", "/readyz", "/metrics", "/version"} | docs
    assert any(m.cls is KeyGate for m in app.user_middleware)
