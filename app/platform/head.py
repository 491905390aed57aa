"""ASGI middleware: HEAD is answered wherever GET is (RFC 9110: a HEAD answer is the GET answer's status and
headers, without its content). FastAPI routes GET only, so HEAD would be a 405; here it runs as the GET and the
content is dropped on the way out (its Content-Length kept, as the GET's)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the rest of the content, which a HEAD answer does not carry
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
