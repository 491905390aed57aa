"""Bad input on the live service (#13 items 1, 8, 9): unencodable text, non-finite numbers, errors that name the
field itself, and requests that used to be accepted though wrong. Each answer is a 4xx in the envelope with the
request id, and the same keep-alive connection serves the next request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import MODEL

CHAT = [{"role": "user", "content": "Hi"}]
LONE = "\ud800"  # a lone surrogate: valid as a JSON escape, no UTF-8 form

SURROGATES = [
    ("POST", "/v1/score", {"model": MODEL, "text": LONE}, "text"),
    (
        "POST",
        "/v1/score",
        {"model": MODEL, "messages": [{"role": "user", "content": f"a{LONE}b"}]},
        "messages.0.content",
    ),
    ("POST", "/v1/generate", {"model": MODEL, "prompt": LONE, "max_tokens": 2}, "prompt"),
    ("POST", "/v1/generate", {"model": MODEL, "prompt": "x", "stop": ["ok", LONE]}, "stop.1"),
    ("POST", "/v1/analysis/uncertainty", {"model": MODEL, "text": LONE}, "text"),
    ("POST", "/v1/analysis/detect", {"model": MODEL, "text": LONE}, "text"),
    ("POST", "/v1/analysis/membership", {"model": MODEL, "text": "x", "params": {LONE: {"k": 0.2}}}, "params.\\ud800"),
    ("POST", "/v1/analysis/compare", {"model": MODEL, "text": "x", "context": LONE}, "context"),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": LONE, "max_tokens": 2}, "prompt"),
    (
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": LONE}]},
        "messages.0.content",
    ),
    ("POST", "/v1/decode/contrastive", {"prompt": LONE, "views": [{"model": MODEL}]}, "prompt"),
    (
        "POST",
        "/v1/batches",
        {"model": MODEL, "inputs": [{"text": "x"}, {"text": "y", "custom_id": LONE}]},
        "inputs.1.custom_id",
    ),
    ("POST", "/v1/calibrations", {"model": MODEL, "texts": [{"text": LONE, "label": "human"}] * 4}, "texts.0.text"),
    ("PUT", "/v1/frequency-tables/corpus", {"model": MODEL, "texts": ["fine", LONE]}, "texts.1"),
]


def send(client: httpx.Client, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
    """The body as Python's json module writes it: non-ASCII escaped, so a lone surrogate goes as `\\ud800`."""
    import json

    return client.request(method, path, content=json.dumps(body), headers={"content-type": "application/json"})


def peer_of(client: httpx.Client) -> Any:
    """Something that changes when the client has to open a new connection: its local port."""
    response = client.get("/healthz")
    assert response.status_code == 200
    address = response.extensions["network_stream"].get_extra_info("client_addr")
    assert address is not None
    return address


@pytest.mark.parametrize(
    ("method", "path", "body", "param"), SURROGATES, ids=[f"{m} {p} {q}" for m, p, _, q in SURROGATES]
)
def test_unencodable_text_is_a_422_and_the_connection_stays(
    alpha: httpx.Client, method: str, path: str, body: dict[str, Any], param: str
) -> None:
    before = peer_of(alpha)
    response = send(alpha, method, path, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("invalid_text", param, "invalid_request_error")
    assert error["message"].startswith(f"{param}: ") and "surrogate" in error["message"]
    assert response.headers["X-Request-Id"]
    assert peer_of(alpha) == before  # the same keep-alive connection
    scored = alpha.post("/v1/score", json={"model": MODEL, "text": "After a refusal."})
    assert scored.status_code == 200 and scored.json()["tokens"][1]["logprob"] < 0


def test_paired_surrogates_are_text(alpha: httpx.Client) -> None:
    """An emoji sent as the escaped pair `\\ud83d\\ude00` is one character, scored like the raw one."""
    escaped = send(alpha, "POST", "/v1/score", {"model": MODEL, "text": "Smile 😀 please."}).json()
    raw = alpha.post("/v1/score", json={"model": MODEL, "text": "Smile 😀 please."}).json()
    assert escaped["record_id"] == raw["record_id"] and "".join(t["text"] for t in raw["tokens"]) == "Smile 😀 please."


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/generate", b'{"model": "%s", "prompt": "x", "temperature": NaN}', "temperature"),
        ("/v1/score", b'{"model": "%s", "text": "x", "top_logprobs": Infinity}', "top_logprobs"),
        ("/v1/analysis/membership", b'{"model": "%s", "text": "x", "params": {"min_k": {"k": NaN}}}', "params.min_k.k"),
        (
            "/v1/decode/contrastive",
            b'{"prompt": "x", "views": [{"model": "%s", "weight": -Infinity}]}',
            "views.0.weight",
        ),
    ],
)
def test_non_finite_numbers_are_refused_by_name(alpha: httpx.Client, path: str, raw: bytes, param: str) -> None:
    response = alpha.post(path, content=raw % MODEL.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["param"], error["message"]) == (param, f"{param}: must be a finite number")


def test_a_body_nested_too_deeply_is_malformed_json_and_the_service_lives_on(alpha: httpx.Client) -> None:
    raw = b"[" * 100_000 + b'"NaN"'  # was a 500: RecursionError escaped the body check
    response = alpha.post("/v1/score", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed_json"
    assert "too deeply" in response.json()["error"]["message"]
    assert alpha.post("/v1/score", json={"model": MODEL, "text": "Still here."}).status_code == 200


@pytest.mark.parametrize(
    ("path", "raw", "where"),
    [
        ("/v1/score", b'{"model": "%s", "text": "caf\xe9 au lait"}', "byte 0xe9 at offset"),  # Latin-1, not UTF-8
        ("/v1/analysis/detect", b'{"model": "%s", "text": "x\xff"}', "byte 0xff at offset"),
        ("/v1/chat/completions", b'{"model": "%s", "messages": [{"role": "user", "content": "\xc3"}]}', "0xc3"),
    ],
)
def test_invalid_utf8_is_malformed_json_saying_so(alpha: httpx.Client, path: str, raw: bytes, where: str) -> None:
    response = alpha.post(path, content=raw % MODEL.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text  # was 400 `http_error` "There was an error parsing the body"
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("malformed_json", None)
    assert "not valid UTF-8" in error["message"] and where in error["message"]
    assert alpha.post("/v1/score", json={"model": MODEL, "text": "caf\u00e9 au lait"}).status_code == 200


def test_a_bad_span_names_the_span_once(alpha: httpx.Client) -> None:
    response = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": "x", "span": "bogus"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "span" and error["message"].count("span") == 1
    assert "literal[" not in error["message"] and "SpanRange" not in error["message"]
    inside = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": "x", "span": {"start": 0, "stop": 2}})
    assert inside.json()["error"]["param"] == "span.start"


def test_routes_and_methods_that_do_not_exist(alpha: httpx.Client) -> None:
    wrong = alpha.put("/v1/score", json={})
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert wrong.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    missing = alpha.get("/v1/no-such-route")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    for method, path in (
        ("GET", "/v1/batches/nope"),
        ("POST", "/v1/batches/nope/cancel"),
        ("GET", "/v1/batches/x/results"),
    ):
        response = alpha.request(method, path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"] | {"message": ""} == {
            "message": "",
            "type": "not_found_error",
            "param": "batch_id",
            "code": "batch_not_found",
        }


def test_an_unknown_view_model_names_its_view(alpha: httpx.Client) -> None:
    body = {"prompt": "x", "views": [{"model": MODEL}, {"model": "no-such-model"}], "max_tokens": 2}
    response = alpha.post("/v1/decode/contrastive", json=body)
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "views.1.model"
    preset = {"name": "ed", "base": MODEL, "aligned": "no-such-model"}
    by_preset = alpha.post("/v1/decode/contrastive", json={"prompt": "x", "preset": preset, "max_tokens": 2})
    assert by_preset.status_code == 404 and by_preset.json()["error"]["param"] == "preset.aligned"


@pytest.mark.parametrize(
    ("path", "body", "code", "param"),
    [
        (
            "/v1/score",
            {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
            "invalid_role",
            "messages.0.role",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [CHAT[0], {"role": "model", "content": "x"}]},
            "invalid_role",
            "messages.1.role",
        ),
        ("/v1/score", {"model": MODEL, "text": "x", "top_logprobs": "5"}, "invalid_request", "top_logprobs"),
        ("/v1/score", {"model": MODEL, "text": "x", "top_logprobs": True}, "invalid_request", "top_logprobs"),
        ("/v1/generate", {"model": MODEL, "prompt": "x", "max_tokens": "4"}, "invalid_request", "max_tokens"),
        ("/v1/generate", {"model": MODEL, "prompt": "x", "top_logprobs": 2.0}, "invalid_request", "top_logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": True}, "invalid_request", "logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "4"}, "invalid_request", "max_tokens"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "top_logprobs": "5", "logprobs": True},
            "invalid_request",
            "top_logprobs",
        ),
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "n": True}, "invalid_request", "n"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "top_logprobs": 3},
            "logprobs_required",
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "top_logprobs": 0, "logprobs": False},
            "logprobs_required",
            "top_logprobs",
        ),
        (
            "/v1/decode/contrastive",
            {"prompt": "x", "views": [{"model": MODEL}, {"model": MODEL, "weight": 0}]},
            "zero_weight",
            "views.1.weight",
        ),
        (
            "/v1/decode/contrastive",
            {"prompt": "x", "views": [{"model": MODEL, "weight": -0.0}]},
            "zero_weight",
            "views.0.weight",
        ),
    ],
)
def test_wrong_requests_that_used_to_pass_are_refused(
    alpha: httpx.Client, path: str, body: dict[str, Any], code: str, param: str
) -> None:
    response = alpha.post(path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]


def test_every_openai_role_is_taken(alpha: httpx.Client) -> None:
    for role in ("system", "user", "assistant", "tool", "developer"):
        response = alpha.post("/v1/score", json={"model": MODEL, "messages": [{"role": role, "content": "Hello."}]})
        assert response.status_code == 200, (role, response.text)
        assert f"<|im_start|>{role}" in "".join(t["text"] for t in response.json()["tokens"])
