"""ASGI middleware: a request's body must have arrived `timeout_s` after the request began; past that a 408
`body_timeout` that closes the connection, whatever was waiting for the body (a slow or stalled body holds nothing
for longer). Once the body is whole, `receive` is passed on untouched (disconnect watchers wait on it)."""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.platform.errors import error_response


class BodyTimedOut(Exception):
    """The body did not arrive in time; raised from `receive` to whatever read it."""


class BodyDeadline:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.timeout_s
        whole = answered = False

        async def timed_receive() -> Message:
            nonlocal whole
            if whole:
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimedOut from None
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except BodyTimedOut:
            if answered:
                raise
            message = f"the request body did not arrive within {self.timeout_s:g}s"
            await error_response(408, "body_timeout", message, headers={"Connection": "close"})(scope, receive, send)
