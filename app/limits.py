"""Per-tenant rate limits (requests and tokens per minute), counted in Redis so every gateway shares them."""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_response

WINDOW_S = 60


async def charge(redis: Redis, tenant: str, what: str, amount: int, limit: int) -> None:
    """Count `amount` against this minute's budget; over `limit`, a 429 that says when the window resets."""
    if limit <= 0 or amount <= 0:
        return
    now = time.time()
    key = f"lp:rate:{tenant}:{what}:{int(now // WINDOW_S)}"
    pipe = redis.pipeline(transaction=True)
    pipe.incrby(key, amount)
    pipe.expire(key, 2 * WINDOW_S)
    used, _ = await pipe.execute()
    if int(used) > limit:
        retry = max(1, math.ceil(WINDOW_S - now % WINDOW_S))
        raise ApiError(
            429,
            f"{what}_rate_limited",
            f"over {limit} {what} per minute for this key; retry in {retry}s",
            headers={"Retry-After": str(retry)},
        )


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by its Content-Length or, for a chunked body, once
    more than that has arrived (a chunked body is buffered, up to the limit, before the route sees it)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "body_too_large", f"request bodies are limited to {self.limit} bytes")
        await response(scope, receive, send)


class InflightLimit:
    """ASGI middleware: at most `limit` requests in the gateway at once (health checks exempt); beyond it a 429
    `overloaded` with Retry-After, so overload turns into refusals instead of ever longer queues."""

    EXEMPT = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            response = error_response(
                429, "overloaded", f"the gateway is handling {self.limit} requests; retry", headers={"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
