"""The error envelope's parts: validation errors that name the field itself, the JSON body check, the envelope's
types, and the catch-all that answers an unexpected error with a 500 and keeps the connection (a real uvicorn)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError

from app.launcher.local_service import free_port
from app.platform.bodies import body_problem
from app.platform.errors import error_type, install_error_handlers
from app.platform.observe import Observe
from app.platform.validation import Problem, not_found, problems
from logprobe.schemas.analysis import AnalysisRequest
from logprobe.schemas.decode import DecodeRequest
from logprobe.schemas.generate import GenerateRequest
from logprobe.schemas.openai import ChatCompletionRequest, CompletionRequest
from logprobe.schemas.score import ScoreRequest


def problems_of(model: type[BaseModel], body: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    errors = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]  # as FastAPI reports them
    return problems(errors, body)


def test_a_union_that_refuses_the_shape_is_one_message_naming_the_field() -> None:
    (problem,) = problems_of(AnalysisRequest, {"model": "m", "text": "x", "span": "bogus"})
    assert problem.param == "span"
    assert problem.message.startswith("should be 'all', 'prompt'")
    assert problem.message.endswith("an object, or a list of integers")
    assert "literal[" not in problem.text() and "SpanRange" not in problem.text()


def test_a_union_branch_that_took_the_shape_speaks_for_it() -> None:
    (problem,) = problems_of(AnalysisRequest, {"model": "m", "text": "x", "span": {"start": 0, "stop": 3}})
    assert problem.param == "span.start" and "greater than or equal to 1" in problem.message
    (listed,) = problems_of(AnalysisRequest, {"model": "m", "text": "x", "span": [1, "two"]})
    assert listed.param == "span.1" and "integer" in listed.message
    (stop,) = problems_of(GenerateRequest, {"model": "m", "prompt": "x", "stop": 5})
    assert (stop.param, stop.message) == ("stop", "should be a string, or a list of strings")
    (missing,) = problems_of(AnalysisRequest, {"model": "m", "text": "x", "span": {"stop": 3}})
    assert (missing.param, missing.message) == ("span.start", "Field required")


def test_non_finite_numbers_say_so_whatever_the_bound() -> None:
    (nan,) = problems_of(GenerateRequest, {"model": "m", "prompt": "x", "temperature": float("nan")})
    assert (nan.param, nan.message) == ("temperature", "must be a finite number")
    (inf,) = problems_of(GenerateRequest, {"model": "m", "prompt": "x", "top_p": float("-inf")})
    assert (inf.param, inf.message) == ("top_p", "must be a finite number")


def test_missing_fields_and_custom_codes() -> None:
    (missing,) = problems_of(ScoreRequest, {"text": "x"})
    assert (missing.param, missing.message, missing.code) == ("model", "Field required", "invalid_request")
    (role,) = problems_of(ScoreRequest, {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]})
    assert (role.param, role.code) == ("messages.0.role", "invalid_role")
    assert role.message == "must be one of system, user, assistant, tool, developer"
    (weight,) = problems_of(DecodeRequest, {"prompt": "p", "views": [{"model": "m"}, {"model": "m", "weight": 0}]})
    assert (weight.param, weight.code) == ("views.1.weight", "zero_weight")


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        (ScoreRequest, {"model": "m", "text": "x", "top_logprobs": "5"}, "top_logprobs"),
        (ScoreRequest, {"model": "m", "text": "x", "top_logprobs": True}, "top_logprobs"),
        (GenerateRequest, {"model": "m", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
        (GenerateRequest, {"model": "m", "prompt": "x", "seed": 1.0}, "seed"),
        (CompletionRequest, {"model": "m", "prompt": "x", "logprobs": True}, "logprobs"),
        (CompletionRequest, {"model": "m", "prompt": "x", "n": "1"}, "n"),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": "5"},
            "top_logprobs",
        ),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": "true"},
            "logprobs",
        ),
    ],
)
def test_numbers_and_flags_are_strict(model: type[BaseModel], body: dict[str, Any], param: str) -> None:
    (problem,) = problems_of(model, body)
    assert problem.param == param and problem.code == "invalid_request"


def test_a_bad_resource_id_in_the_path_is_not_found() -> None:
    error = {"type": "string_pattern_mismatch", "loc": ("path", "batch_id"), "msg": "…", "input": "nope"}
    assert not_found([error]) == ("batch_not_found", "no batch 'nope'", "batch_id")
    assert not_found([{**error, "loc": ("path", "name")}]) is None  # a name is no id: a 422 as usual
    assert not_found([{**error, "loc": ("query", "batch_id")}]) is None


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b'{"model": "m", "text": "\\ud800"}', "text", "invalid_text"),
        (
            b'{"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "a\\uDFFFb"}]}',
            "messages.1.content",
            "invalid_text",
        ),
        (b'{"params": {"\\ud83d": {"k": 1}}}', "params.\\ud83d", "invalid_text"),
        (
            b'{"inputs": [{"text": "x"}, {"text": "y", "custom_id": "\\udc00\\ud800"}]}',
            "inputs.1.custom_id",
            "invalid_text",
        ),
        (b'{"temperature": NaN}', "temperature", "invalid_request"),
        (b'{"views": [{"weight": 1}, {"weight": -Infinity}]}', "views.1.weight", "invalid_request"),
    ],
)
def test_body_check_finds_the_path(body: bytes, param: str, code: str) -> None:
    problem = body_problem(body)
    assert problem is not None and (problem.param, problem.code) == (param, code)
    json.dumps({"param": problem.param, "message": problem.text()}).encode()  # the answer itself can be sent


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "\\ud83d\\ude00 a paired escape is an emoji"}',
        b'{"text": "NaN and Infinity inside a string are words"}',
        b'{"text": "plain"}',
        b"{not json NaN",  # left to the route: malformed_json
        b"",
    ],
)
def test_body_check_lets_good_bodies_through(body: bytes) -> None:
    assert body_problem(body) is None


def test_a_body_nested_too_deeply_is_malformed_json_not_a_crash() -> None:
    problem = body_problem(b"[" * 100_000 + b'"NaN"')  # the byte scan sends it to the reader, which recurses
    assert problem is not None and problem.code == "malformed_json" and "too deeply" in problem.text()


def test_error_types_are_client_errors_for_4xx() -> None:
    assert error_type(405) == error_type(422) == error_type(499) == "invalid_request_error"
    assert error_type(404) == "not_found_error" and error_type(401) == "authentication_error"
    assert error_type(500) == error_type(502) == "server_error"


def failing_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(Observe)

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        raise RuntimeError("an unexpected failure")

    @app.get("/fine")
    async def fine(request: Request) -> dict[str, Any]:
        return {"ok": "yes", "peer": list(request.client or ())}  # which connection the request came on

    return app


@pytest.fixture(scope="module")
def failing_server() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(failing_app(), host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_an_unexpected_error_is_a_500_envelope_and_the_connection_stays(failing_server: str) -> None:
    with httpx.Client(base_url=failing_server, timeout=10) as client:
        peer = client.get("/fine").json()["peer"]
        for _ in range(3):  # each time the same keep-alive connection answers the next request
            response = client.get("/boom", headers={"X-Request-Id": "req-123"})
            assert response.status_code == 500
            assert response.headers["X-Request-Id"] == "req-123"
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("server_error", "internal_error")
            assert "req-123" in error["message"] and "unexpected failure" not in error["message"]
            assert response.headers.get("connection") != "close"
            assert client.get("/fine").json() == {"ok": "yes", "peer": peer}
        wrong = client.put("/fine")
        assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET"
        assert wrong.json()["error"]["type"] == "invalid_request_error"
