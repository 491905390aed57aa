"""The gateway's HTTP connections: uvicorn's httptools protocol with deadlines and a bound on request heads.

- A request's head (request line and headers) is at most `max_header_bytes`: beyond it a 431 `header_too_large`
  and the connection closed, before more of it is kept (httptools alone buffers a header of any size).
- A head must be whole `header_read_timeout_s` after the connection opened or after its first byte arrived: past
  that the connection is closed (with a 408 `header_timeout` if part of a head came). An idle keep-alive
  connection is closed after uvicorn's `timeout_keep_alive` (`keep_alive_s`), as before.
- A request answered before its body arrived (a 401, 413 or 429 does not read it) keeps its connection only until
  `body_read_timeout_s` after its head; a body still unfinished then closes it. (A body the app waits for has the
  same deadline, answered 408 by `app.platform.body_deadline`.)

Every launcher passes `HTTP_PROTOCOL` to uvicorn (`logprobe serve`, hence the Dockerfile and compose, and
`LocalService`), so the limits hold however the gateway is started; they are read from the settings (the
environment), as each gateway process's app reads them.
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.platform.errors import error_type
from app.platform.settings import get_settings

HTTP_PROTOCOL = "app.platform.connections:GuardedHttpProtocol"


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over the limit."""


def error_bytes(status: int, code: str, message: str) -> bytes:
    """A whole HTTP answer in the error envelope that closes the connection, for answers given before any app."""
    body = json.dumps({"error": {"message": message, "type": error_type(status), "param": None, "code": code}}).encode()
    head = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    return b"".join([*head, body])


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds and deadlines of the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.max_head_bytes = settings.max_header_bytes
        self.head_timeout_s = settings.header_read_timeout_s
        self.body_timeout_s = settings.body_read_timeout_s
        self.awaiting_head = True  # no head in progress is whole yet: what arrives now belongs to one
        self.head_bytes = 0  # bytes received since the last whole head (an upper bound on the next head's size)
        self.head_parsed = 0  # the head's size as the parser reports it (URL, header names and values)
        self.in_body = False  # between a head and the end of its body
        self.body_deadline = 0.0
        self.head_timer: TimerHandle | None = None
        self.body_timer: TimerHandle | None = None
        self.refusal: tuple[int, str, str] | None = None

    # ---------------------------------------------------------------- connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.awaiting_head:
            self.head_bytes += len(data)
            if self.head_timer is None:
                self._arm_head_timer()
        super().data_received(data)
        if self.awaiting_head and self.head_bytes > self.max_head_bytes and not self.transport.is_closing():
            self._refuse(431, "header_too_large", f"request heads are limited to {self.max_head_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a head the parser refused: a 431 when it was refused for its size."""
        if self.refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(*self.refusal)

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.head_parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.awaiting_head, self.in_body, self.head_bytes = False, True, 0
        self.body_deadline = self.loop.time() + self.body_timeout_s
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_head, self.in_body = True, False
        if self.body_timer is not None:  # answered early, and the rest of the body came in time: idle now
            self.body_timer.cancel()
            self.body_timer = None
            if not self.pipeline and not self.transport.is_closing():
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.in_body and not self.transport.is_closing():  # answered before its body came: not for ever
            self.body_timer = self.loop.call_at(self.body_deadline, self._body_expired)

    # ---------------------------------------------------------------- limits

    def _count(self, n: int) -> None:
        self.head_parsed += n
        if self.head_parsed > self.max_head_bytes:
            self.refusal = (431, "header_too_large", f"request heads are limited to {self.max_head_bytes} bytes")
            raise HeadTooLarge

    def _arm_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _head_expired(self) -> None:
        self.head_timer = None
        if self.head_bytes == 0:
            self._close_when_idle()  # nothing sent: nothing to answer
        else:
            self._refuse(408, "header_timeout", f"the request head did not arrive within {self.head_timeout_s:g}s")

    def _body_expired(self) -> None:
        self.body_timer = None
        self._close_when_idle()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer `status` and close; while an earlier pipelined answer is under way, close after it instead."""
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.flow.pause_reading()
            self.cycle.keep_alive = False
            return
        self.transport.write(error_bytes(status, code, message))
        self.transport.close()

    def _close_when_idle(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # uvicorn closes the connection once this answer is sent
        elif not self.transport.is_closing():
            self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self.head_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = None
