"""The gateway's admission limits, on a real event loop and real ASGI: requests working in the process are
capped, requests waiting on a worker (parked) are not, and every refusal is a 429 `overloaded`."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.platform.limits import InflightLimit, parked


def limited_app(limit: int, busy_limit: int, caller_limit: int | None = None) -> tuple[Starlette, asyncio.Event]:
    release = asyncio.Event()

    async def work(request: Request) -> JSONResponse:  # holds its place while "working"
        await release.wait()
        return JSONResponse({"ok": True})

    async def wait(request: Request) -> JSONResponse:  # as JobQueue.wait does while a worker runs the job
        with parked():
            await release.wait()
        return JSONResponse({"ok": True})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/work", work), Route("/wait", wait), Route("/healthz", health)])
    app.add_middleware(InflightLimit, limit=limit, busy_limit=busy_limit, caller_limit=caller_limit or limit)
    return app, release


async def test_working_requests_are_capped_and_waiting_ones_are_not() -> None:
    app, release = limited_app(limit=5, busy_limit=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client:
        waiting = [asyncio.create_task(client.get("/wait")) for _ in range(3)]
        working = [asyncio.create_task(client.get("/work")) for _ in range(2)]
        await asyncio.sleep(0.05)
        busy = await client.get("/work")  # 2 working: the busy cap
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "overloaded" and "2 requests at work" in busy.json()["error"]["message"]
        assert (await client.get("/healthz")).status_code == 200  # health checks are exempt
        release.set()
        assert [r.status_code for r in await asyncio.gather(*waiting, *working)] == [200] * 5


async def test_the_cap_on_all_requests_counts_waiting_ones() -> None:
    app, release = limited_app(limit=3, busy_limit=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client:
        waiting = [asyncio.create_task(client.get("/wait")) for _ in range(3)]
        await asyncio.sleep(0.05)
        full = await client.get("/work")
        assert full.status_code == 429 and "3 requests" in full.json()["error"]["message"]
        release.set()
        assert [r.status_code for r in await asyncio.gather(*waiting)] == [200] * 3
        assert (await client.get("/work")).status_code == 200  # every place given back


async def test_a_request_answered_while_still_parked_gives_its_place_back_once() -> None:
    release, waits = asyncio.Event(), []

    async def wait_beyond_answer() -> None:  # as a stream's waiter task, which may end after the answer
        with parked():
            await release.wait()

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        waits.append(asyncio.create_task(wait_beyond_answer()))  # the task copies the request's context
        await asyncio.sleep(0)
        await JSONResponse({"ok": True})(scope, receive, send)

    limiter = InflightLimit(inner, limit=5, busy_limit=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(limiter), base_url="http://gateway") as client:
        assert [(await client.get("/x")).status_code for _ in range(3)] == [200] * 3
        assert (limiter.active, limiter.busy) == (0, 0)
        release.set()
        await asyncio.gather(*waits)
        assert (limiter.active, limiter.busy) == (0, 0)


async def test_one_api_key_holds_at_most_its_share_and_others_still_get_in() -> None:
    app, release = limited_app(limit=6, busy_limit=6, caller_limit=4)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client:
        greedy = {"Authorization": "Bearer greedy"}
        held = [asyncio.create_task(client.get("/wait", headers=greedy)) for _ in range(4)]
        await asyncio.sleep(0.05)
        refused = await client.get("/wait", headers=greedy)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "overloaded"
        assert "this API key has 4 requests" in refused.json()["error"]["message"]
        other = asyncio.create_task(client.get("/wait", headers={"Authorization": "Bearer other"}))
        anonymous = asyncio.create_task(client.get("/wait"))
        await asyncio.sleep(0.05)
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held, other, anonymous)] == [200] * 6


def test_a_key_share_defaults_to_three_quarters_of_the_gateway() -> None:
    assert InflightLimit(Starlette(), limit=256, busy_limit=32).caller_limit == 192


async def test_one_key_spelled_differently_is_still_one_caller() -> None:
    """The share goes by the key as authentication reads it: the scheme's case, padding around the key and a
    second Authorization header (authentication reads the first) open no further shares."""
    app, release = limited_app(limit=10, busy_limit=10, caller_limit=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client:
        held = [asyncio.create_task(client.get("/wait", headers={"Authorization": "Bearer k1"})) for _ in range(2)]
        await asyncio.sleep(0.05)
        spellings = [
            [("Authorization", "bearer k1")],
            [("Authorization", "BEARER   k1")],
            [("Authorization", "Bearer k1"), ("Authorization", "Bearer something-else")],
        ]
        tries = [asyncio.create_task(client.get("/wait", headers=httpx.Headers(h))) for h in spellings]
        await asyncio.sleep(0.05)
        release.set()  # an admitted try would wait for this: it answers 200 below
        answers = await asyncio.gather(*tries)
        assert [r.status_code for r in answers] == [429] * len(spellings)
        assert all("this API key has 2 requests" in r.json()["error"]["message"] for r in answers)
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 2
