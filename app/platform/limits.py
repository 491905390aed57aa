"""Per-tenant rate limits (requests and tokens per minute), counted in Redis so every gateway shares them."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.platform import budget
from app.platform.errors import ApiError, error_response
from workers.contract.keys import tenant_tag
from workers.contract.lifetimes import announce, keep_until

WINDOW_S = 60


async def _add(redis: Redis, tenant: str, what: str, amount: int, now: float) -> int:
    """Count in this window's counter: it has no TTL (eviction must not reset it), its lifetime ends a window after
    its own (workers/contract/lifetimes.py)."""
    window = int(now // WINDOW_S)
    key = f"lp:rate:{tenant_tag(tenant)}:{what}:{window}"
    pipe = redis.pipeline(transaction=False)  # one round trip; the counter and its deadline share a slot
    pipe.incrby(key, amount)
    keep_until(pipe, (window + 2) * WINDOW_S, key)
    announce(pipe, key)
    used, _, _ = await pipe.execute()
    return int(used)


_prepaid: ContextVar[bool] = ContextVar("prepaid", default=False)


@contextlib.contextmanager
def prepaid() -> Iterator[None]:
    """Work whose whole cost was charged when it was asked for (a head's preparation): the charges made inside
    count nothing again."""
    token = _prepaid.set(True)
    try:
        yield
    finally:
        _prepaid.reset(token)


async def charge(redis: Redis, tenant: str, what: str, amount: int, limit: int) -> None:
    """Count `amount` against this minute's budget; over `limit`, a 429 that says when the window resets. A request
    that alone needs more than a whole minute's budget is a 422 `request_exceeds_budget` (no retry could pass) and
    is not counted (app/platform/budget.py). Inside `prepaid()` nothing is counted."""
    if limit <= 0 or amount <= 0 or _prepaid.get():
        return
    budget.fits_with_what_it_spent(what, amount, limit)
    now = time.time()
    if await _add(redis, tenant, what, amount, now) > limit:
        retry = max(1, math.ceil(WINDOW_S - now % WINDOW_S))
        raise ApiError(
            429,
            f"{what}_rate_limited",
            f"over {limit} {what} per minute for this key; retry in {retry}s",
            headers={"Retry-After": str(retry)},
        )


async def charge_after(redis: Redis, tenant: str, what: str, amount: int, limit: int) -> None:
    """Count work already done (its size known only once done) against this minute's budget, refusing nothing:
    the tenant's next request sees it."""
    if limit > 0 and amount > 0:
        await _add(redis, tenant, what, amount, time.time())


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
        await self.app(scope, replay_body(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "body_too_large", f"request bodies are limited to {self.limit} bytes")
        await response(scope, receive, send)


@dataclass
class Ticket:
    """A request admitted by InflightLimit; `parked` counts the waits on workers it is in right now."""

    limiter: InflightLimit
    parked: int = 0
    done: bool = False  # answered: a wait that ends later gives nothing back


admitted: ContextVar[Ticket | None] = ContextVar("admitted", default=None)


@contextlib.contextmanager
def parked() -> Iterator[None]:
    """While a request waits on a worker it costs this process nothing, so it does not count as busy."""
    ticket = admitted.get()
    if ticket is not None:
        ticket.parked += 1
        if ticket.parked == 1:
            ticket.limiter.busy -= 1
    try:
        yield
    finally:
        if ticket is not None:
            ticket.parked -= 1
            if ticket.parked == 0 and not ticket.done:
                ticket.limiter.busy += 1


def parked_receive(receive: Receive) -> Receive:
    """A `receive` that counts as parked while it waits for the body: a body still arriving costs this process
    nothing. (Once the body is whole, waits for a disconnect pass through as they are.)"""
    whole = False

    async def wait() -> Message:
        nonlocal whole
        if whole:
            return await receive()
        with parked():
            message = await receive()
        whole = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return wait


def bearer_key(header: str) -> str:
    """The API key an Authorization header presents ("Bearer <key>", the scheme in any case); "" if none."""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def presented_key(scope: Scope) -> str:
    """The API key of a request as authentication reads it: its first Authorization header's."""
    header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
    return bearer_key(header.decode("latin-1"))


class InflightLimit:
    """ASGI middleware: at most `limit` requests in this gateway process at once, and at most `busy_limit` of them
    working here rather than waiting on a worker (health checks exempt); beyond either a 429 `overloaded` with
    Retry-After, so overload turns into quick refusals instead of ever longer queues.

    Waiting requests cost the event loop nothing, so `limit` can be generous. Working ones (analyses, answers
    being built) share one core: a few at a time answer fast, many at a time all answer late (BENCHMARKS.md).
    One API key (as authentication reads it; anonymous callers share one) holds at most `caller_limit` of the
    `limit` places, so a client that opens hundreds of requests leaves room for everyone else's. Callers without a
    valid key never get here (`app.platform.key_gate`), and a request whose body is still arriving waits as a
    parked one does: a slow body is not work (and has a deadline, `app.platform.body_deadline`).
    """

    EXEMPT = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, limit: int, busy_limit: int, caller_limit: int | None = None) -> None:
        self.app, self.limit, self.busy_limit = app, limit, busy_limit
        self.caller_limit = caller_limit if caller_limit is not None else max(1, limit * 3 // 4)
        self.active = self.busy = 0
        self.by_caller: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        caller = presented_key(scope)
        refusal = self._refusal(caller)
        if refusal:
            response = error_response(429, "overloaded", refusal, headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        self.active += 1
        self.busy += 1
        self.by_caller[caller] = self.by_caller.get(caller, 0) + 1
        ticket = Ticket(self)
        token = admitted.set(ticket)
        try:
            await self.app(scope, parked_receive(receive), send)
        finally:
            admitted.reset(token)
            ticket.done = True
            self.active -= 1
            if ticket.parked == 0:
                self.busy -= 1
            self.by_caller[caller] -= 1
            if not self.by_caller[caller]:
                del self.by_caller[caller]

    def _refusal(self, caller: str) -> str | None:
        if self.busy >= self.busy_limit:
            return f"the gateway is handling {self.busy} requests at work; retry"
        if self.active >= self.limit:
            return f"the gateway is handling {self.active} requests; retry"
        if self.by_caller.get(caller, 0) >= self.caller_limit:
            return f"this API key has {self.caller_limit} requests in flight here, its share of the gateway; retry"
        return None


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app a body already read, then goes on with the real one (disconnects)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
