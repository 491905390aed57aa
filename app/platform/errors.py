"""One error envelope for every failure: {"error": {"message", "type", "param", "code"}} (OpenAI/vLLM style)."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.platform.validation import MAX_PROBLEMS, not_found, problems
from workers.redis_client import STORAGE_FULL
from workers.redis_client import storage_full as is_storage_full

log = logging.getLogger("app")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    424: "generation_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorEnvelope(BaseModel):
    """Every error answer: 4xx with a machine-readable `code`, 5xx for the service's own failures."""

    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {"4XX": {"model": ErrorEnvelope}, "5XX": {"model": ErrorEnvelope}}


class ApiError(Exception):
    """An error with an HTTP status and a machine-readable code."""

    def __init__(
        self, status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.param, self.headers)


STORAGE_FULL_RETRY_S = 30  # memory frees as records expire or an operator acts: not within a second


def storage_full(message: str = "the store is full (Redis reached its memory limit); retry later") -> ApiError:
    """The answer while Redis is full: 503 `storage_full`, with a Retry-After."""
    return ApiError(503, STORAGE_FULL, message, headers={"Retry-After": str(STORAGE_FULL_RETRY_S)})


class ClientGone(Exception):
    """The client of the request waiting on a job disconnected; the job was cancelled if it had not started."""


def error_type(status: int) -> str:
    """The envelope's `type`: a client's mistake for any 4xx, the service's own failure for any 5xx."""
    return ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "server_error")


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def internal_error(request_id: str) -> JSONResponse:
    """The answer to an unexpected failure: a 500 in the envelope, naming the request for its log lines."""
    return error_response(
        500, "internal_error", f"the service failed unexpectedly; request id {request_id} names it in the logs"
    )


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    missing = not_found(errors)
    if missing is not None:
        code, message, param = missing
        return error_response(404, code, message, param)
    found = problems(errors, exc.body)[:MAX_PROBLEMS]
    if not found:
        return error_response(422, "invalid_request", "the request is invalid")
    message = "; ".join(p.text() for p in found)
    return error_response(422, found[0].code, message, found[0].param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
        return error_response(499, "client_closed_request", "the client went away; its job was cancelled")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        route = f"{request.method} {request.url.path}"
        allowed = (exc.headers or {}).get("Allow", "")
        code, message = {
            404: ("not_found", f"no route {route}"),
            405: ("method_not_allowed", f"{route} is not allowed; this path takes {allowed}"),
        }.get(exc.status_code, ("http_error", str(exc.detail)))
        return error_response(exc.status_code, code, message, headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    @app.exception_handler(redis.exceptions.ClusterError)  # a Redis Cluster failing over: CLUSTERDOWN, TRYAGAIN, ...
    @app.exception_handler(redis.exceptions.ClusterDownError)
    @app.exception_handler(redis.exceptions.TryAgainError)
    @app.exception_handler(redis.exceptions.SlotNotCoveredError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return error_response(
            503, "redis_unavailable", "the job store is unavailable; retry shortly", headers={"Retry-After": "2"}
        )

    @app.exception_handler(redis.exceptions.ResponseError)  # OutOfMemoryError is one; a script's OOM another
    async def _redis_refused(request: Request, exc: Exception) -> JSONResponse:
        if not is_storage_full(exc):
            raise exc  # any other refusal is the service's own failure: Observe answers 500 and logs it
        log.warning("redis is full: %s", exc)
        full = storage_full()
        return error_response(full.status, full.code, full.message, headers=full.headers)
