"""ASGI middleware: JSON bodies whose values no route can use are refused before any route sees them.

- A string holding a lone surrogate (`"\\ud800"` is valid JSON escape syntax, but no UTF-8 text): tokenizers,
  Redis and JSON answers cannot encode it. 422 `invalid_text`, `param` the path of the string (or key).
- NaN and ±Infinity (Python's JSON reader takes them, strict JSON has no such numbers): 422 `invalid_request`,
  "must be a finite number", whatever bound the field has.
- JSON nested deeper than Python's reader can follow (`[` x 100,000 …): 400 `malformed_json`, saying so.
- Bytes that are not text in the body's encoding (invalid UTF-8): 400 `malformed_json`, naming the first bad byte.
- A body sent as something other than JSON (curl's `-d` alone sends a form) or without a content type (which the
  routes would not read as JSON): 415 `unsupported_media_type`, saying which content type to send.

A byte scan finds bodies that may hold either (an escape of a surrogate, or the words NaN / Infinity); only those
are parsed here, and only the ones that really hold one are walked for its path.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.platform.errors import error_response
from app.platform.limits import replay_body
from app.platform.validation import Path, Problem

SUSPECT = re.compile(rb"\\u[dD][89a-fA-F]|NaN|Infinity")
METHODS = ("POST", "PUT", "PATCH")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def first_problem(value: Any, path: Path = ()) -> Problem | None:
    """The first unencodable string or non-finite number in a decoded JSON value, depth first."""
    if isinstance(value, str):
        return None if _encodable(value) else _bad_text(path)
    if isinstance(value, float):
        return None if math.isfinite(value) else Problem(path, "must be a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            if not _encodable(key):
                return _bad_text((*path, key.encode("utf-8", "backslashreplace").decode()))
            found = first_problem(item, (*path, key))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = first_problem(item, (*path, i))
            if found is not None:
                return found
    return None


def _bad_text(path: Path) -> Problem:
    return Problem(
        path,
        "holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which has no UTF-8 form",
        "invalid_text",
    )


def encoding_problem(body: bytes) -> Problem | None:
    """Whether the body fails to decode as JSON's reader decodes it (UTF-8, or UTF-16/32 by their byte order)."""
    if body.isascii():
        return None
    encoding = json.detect_encoding(body)
    try:
        body.decode(encoding, "surrogatepass")  # as json.loads decodes bytes
    except UnicodeDecodeError as exc:
        name = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        where = f"byte 0x{body[exc.start]:02x} at offset {exc.start} ({exc.reason})"
        return Problem((), f"the request body is not valid {name}: {where}", "malformed_json")
    return None


def body_problem(body: bytes) -> Problem | None:
    """What is wrong with a JSON body here, if anything (a body that is not JSON is left to the route)."""
    bad_bytes = encoding_problem(body)
    if bad_bytes is not None:
        return bad_bytes
    if not SUSPECT.search(body):
        return None
    try:
        return first_problem(json.loads(body))
    except ValueError:
        return None  # the route answers malformed_json
    except RecursionError:
        return Problem((), "the JSON body nests arrays or objects too deeply to read", "malformed_json")


class JsonBodyCheck:
    """Reads a request's body, refuses it (422) if `body_problem` finds something, else replays it to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and not is_json(scope):
            await _not_json(scope)(scope, receive, send)
            return
        problem = body_problem(body)
        if problem is not None:
            status = 400 if problem.code == "malformed_json" else 422
            await error_response(status, problem.code, problem.text(), problem.param)(scope, receive, send)
            return
        await self.app(scope, replay_body(body, receive), send)


def is_json(scope: Scope) -> bool:
    """Whether the request's Content-Type is JSON (`application/json`, `application/*+json`)."""
    given: str = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
    return given == "application/json" or (given.startswith("application/") and given.endswith("+json"))


def _not_json(scope: Scope) -> Any:
    given = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
    sent = f"sent as {given[:100]!r}" if given else "sent without a Content-Type"
    return error_response(
        415,
        "unsupported_media_type",
        f"the body is {sent}, but this service reads JSON: send it with 'Content-Type: application/json' "
        "(curl: -H 'content-type: application/json')",
    )
