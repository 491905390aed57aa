"""ASGI middleware: a request id (echoed in X-Request-Id and in every log line), two security headers on every
answer (`X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`), the latency metric by route, one access log
line per request, a 503 `shutting_down` (with Retry-After) for a request the server cancels when its shutdown grace
ends, and the last word on unexpected errors: a 500 in the error envelope, with the request id, logged with its
traceback, and the connection kept (an exception that reached the server would make it drop the keep-alive
connection; once an answer has begun there is nothing else to do).

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which hides a client's disconnect from the routes
(they poll it to cancel jobs whose client went away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.platform import logs, metrics
from app.platform.errors import internal_error, shutting_down

log = logging.getLogger("app")
# No answer is sniffed into another type (a JSON error echoing text is never run as HTML) or framed by another site.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = (given or uuid.uuid4().hex)[:128]
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status, started_answer = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_answer
            if message["type"] == "http.response.start":
                status, started_answer = message["status"], True
                own = [(b"x-request-id", rid.encode("latin-1")), *SECURITY_HEADERS]
                message["headers"] = [*message.get("headers", []), *own]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:  # the server's shutdown grace ended with this request still running
            if not started_answer:
                with contextlib.suppress(Exception):
                    await shutting_down()(scope, receive, send_with_id)
            raise
        except Exception:
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if started_answer:
                raise
            await internal_error(rid)(scope, receive, send_with_id)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")  # the router records the matched route
            metrics.REQUESTS.labels(scope["method"], template, str(status)).observe(time.perf_counter() - started)
            logs.log_request(scope["method"], scope["path"], status, started)
            logs.request_id.reset(token)
