"""What a newcomer tripped on (#30 items 15, 16, 20, 21), on the live service: method parameters as strict as the
top level, undefined values null with a reason, errors whose `param` names the field at fault, and requests that
were wrong but answered 200."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import MODEL

TEXT = "Water boils at 100 degrees Celsius at sea level."  # the README's uncertainty example
PRESET = {"name": "prompt_contrast", "model": MODEL, "alpha": 0.5}


def refused(response: httpx.Response, status: int, code: str, param: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    return str(error["message"])


# ------------------------------------------------------------------ item 15: params are strict


@pytest.mark.parametrize("value", ["16", True, 16.0, None, [16]])
def test_an_integer_parameter_takes_an_integer_only(alpha: httpx.Client, value: Any) -> None:
    body = {
        "model": MODEL,
        "text": TEXT,
        "methods": ["entropy_trend"],
        "params": {"entropy_trend": {"block_size": value}},
    }
    message = refused(
        alpha.post("/v1/analysis/uncertainty", json=body), 422, "invalid_params", "params.entropy_trend.block_size"
    )
    assert "must be an integer" in message
    analysis = {"family": "uncertainty", "methods": body["methods"], "params": body["params"]}
    batch = {"model": MODEL, "inputs": [{"text": TEXT}], "analyses": [analysis]}
    refused(alpha.post("/v1/batches", json=batch), 422, "invalid_params", "params.entropy_trend.block_size")


@pytest.mark.parametrize("value", ["0.2", True])
def test_a_number_parameter_takes_a_number_only(alpha: httpx.Client, value: Any) -> None:
    body = {"model": MODEL, "text": TEXT, "methods": ["min_k"], "params": {"min_k": {"k": value}}}
    message = refused(alpha.post("/v1/analysis/membership", json=body), 422, "invalid_params", "params.min_k.k")
    assert "must be a number" in message


def test_well_typed_parameters_still_run(alpha: httpx.Client) -> None:
    body = {"model": MODEL, "text": TEXT, "methods": ["entropy_trend"], "params": {"entropy_trend": {"block_size": 2}}}
    answer = alpha.post("/v1/analysis/uncertainty", json=body)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["details"]["entropy_trend.blocks"]) == -(-answer.json()["n_positions"] // 2)
    member = {"model": MODEL, "text": TEXT, "methods": ["min_k"], "params": {"min_k": {"k": 1}}}  # an int for a float
    assert alpha.post("/v1/analysis/membership", json=member).status_code == 200


# ------------------------------------------------------------------ item 16: undefined is null, with a reason


def test_the_entropy_trend_of_a_single_block_is_null_and_says_why(alpha: httpx.Client) -> None:
    answer = alpha.post("/v1/analysis/uncertainty", json={"model": MODEL, "text": TEXT})  # as the README runs it
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["n_positions"] <= 16 and len(body["details"]["entropy_trend.blocks"]) == 1
    assert body["sequence"]["entropy_trend.slope"] is None
    assert "two blocks" in body["undefined"]["entropy_trend.slope"]
    two = {"model": MODEL, "text": TEXT, "params": {"entropy_trend": {"block_size": 4}}}
    sloped = alpha.post("/v1/analysis/uncertainty", json=two).json()
    assert isinstance(sloped["sequence"]["entropy_trend.slope"], float)
    assert "entropy_trend.slope" not in sloped["undefined"]


# ------------------------------------------------------------------ item 20: `param` names the field


def test_context_length_exceeded_names_the_input_or_max_tokens(alpha: httpx.Client) -> None:
    long = "word " * 9000  # over the 8,192 positions
    refused(alpha.post("/v1/score", json={"model": MODEL, "text": long}), 422, "context_length_exceeded", "text")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": long}]}
    refused(alpha.post("/v1/score", json=chat), 422, "context_length_exceeded", "messages")
    prompt = {"model": MODEL, "prompt": long, "max_tokens": 1}
    refused(alpha.post("/v1/generate", json=prompt), 422, "context_length_exceeded", "prompt")
    n = alpha.post("/tokenize", json={"model": MODEL, "prompt": "word " * 7800}).json()["count"]
    fits = {"model": MODEL, "prompt": "word " * 7800, "max_tokens": 1000}
    message = refused(alpha.post("/v1/generate", json=fits), 422, "context_length_exceeded", "max_tokens")
    assert f"at most {8192 - n}" in message
    completion = {"model": MODEL, "prompt": [long, "short"], "max_tokens": 1}
    refused(alpha.post("/v1/completions", json=completion), 422, "context_length_exceeded", "prompt.0")
    context = {"model": MODEL, "text": "A short text.", "context": long}
    refused(alpha.post("/v1/analysis/compare", json=context), 422, "context_length_exceeded", "context")


def test_cover_set_too_large_names_max_states(alpha: httpx.Client) -> None:
    body = {"model": MODEL, "text": "A text of some length, which needs more than two cover states.", "max_states": 2}
    message = refused(alpha.post("/v1/bytes", json=body), 422, "cover_set_too_large", "max_states")
    assert "2" in message


def test_an_empty_generate_prompt_names_prompt(alpha: httpx.Client) -> None:
    message = refused(alpha.post("/v1/generate", json={"model": MODEL, "prompt": ""}), 422, "empty_text", "prompt")
    assert "prompt" in message


def test_an_unknown_replacement_model_names_replacement_model(alpha: httpx.Client) -> None:
    body = {"model": MODEL, "text": TEXT, "positions": [4], "method": "reagent", "replacement_model": "no-such-model"}
    refused(alpha.post("/v1/analysis/attribution", json=body), 404, "model_not_found", "replacement_model")


def test_an_unknown_frequency_table_names_the_field_that_named_it(alpha: httpx.Client) -> None:
    refused(alpha.get("/v1/frequency-tables/nope"), 404, "frequency_table_not_found", "name")
    refused(alpha.delete("/v1/frequency-tables/nope"), 404, "frequency_table_not_found", "name")
    body = {"model": MODEL, "text": TEXT, "methods": ["dc_pdd"], "frequency_table": "nope"}
    refused(alpha.post("/v1/analysis/membership", json=body), 404, "frequency_table_not_found", "frequency_table")


def test_an_empty_span_says_it_lists_no_position(alpha: httpx.Client) -> None:
    body = {"model": MODEL, "text": TEXT, "span": []}
    message = refused(alpha.post("/v1/analysis/uncertainty", json=body), 422, "invalid_span", "span")
    assert "at least one position" in message and "must lie in" not in message


def test_a_negative_token_id_is_one_message_about_that_id(alpha: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": [-1], "max_tokens": 1}
    message = refused(alpha.post("/v1/completions", json=body), 422, "invalid_request", "prompt.0")
    assert "greater than or equal to 0" in message and "string" not in message and ";" not in message
    nested = {"model": MODEL, "prompt": [[5, -2]], "max_tokens": 1}
    message = refused(alpha.post("/v1/completions", json=nested), 422, "invalid_request", "prompt.0.1")
    assert "greater than or equal to 0" in message and "string" not in message


# ------------------------------------------------------------------ item 21: wrong but 200


def test_the_default_table_of_an_unknown_model_is_a_404(alpha: httpx.Client) -> None:
    refused(alpha.get("/v1/frequency-tables/default", params={"model": "nope"}), 404, "model_not_found", "model")
    assert alpha.get("/v1/frequency-tables/default", params={"model": MODEL}).status_code == 200


def test_no_methods_and_no_heads_is_nothing_to_run(alpha: httpx.Client) -> None:
    body = {"model": MODEL, "text": TEXT, "methods": []}
    refused(alpha.post("/v1/analysis/uncertainty", json=body), 422, "invalid_request", "methods")
    batch = {"model": MODEL, "inputs": [{"text": TEXT}], "analyses": [{"family": "detect", "methods": []}]}
    refused(alpha.post("/v1/batches", json=batch), 422, "invalid_request", "methods")


def test_tokenize_refuses_an_empty_chat(alpha: httpx.Client) -> None:
    refused(alpha.post("/tokenize", json={"model": MODEL, "messages": []}), 422, "invalid_request", "messages")


def test_batches_page_after_a_known_batch_only(alpha: httpx.Client) -> None:
    ids = [
        alpha.post("/v1/batches", json={"model": MODEL, "inputs": [{"text": f"Paged batch {i}."}]}).json()["id"]
        for i in range(2)
    ]
    listed = [b["id"] for b in alpha.get("/v1/batches", params={"limit": 100}).json()["data"]]
    assert set(ids) <= set(listed)
    first = alpha.get("/v1/batches", params={"limit": 1}).json()
    assert [b["id"] for b in first["data"]] == listed[:1] and first["has_more"] is True
    after = alpha.get("/v1/batches", params={"limit": 2, "after": listed[0]}).json()
    assert [b["id"] for b in after["data"]] == listed[1:3]
    refused(alpha.get("/v1/batches", params={"after": "batch_" + "0" * 32}), 404, "batch_not_found", "after")


@pytest.mark.parametrize("path", ["/v1/calibrations", "/v1/heads", "/v1/batches"])
@pytest.mark.parametrize("limit", ["-1", "abc", "0", "101"])
def test_list_limits_are_checked(alpha: httpx.Client, path: str, limit: str) -> None:
    refused(alpha.get(path, params={"limit": limit}), 422, "invalid_request", "limit")


@pytest.mark.parametrize("path", ["/v1/calibrations", "/v1/heads"])
def test_list_limits_cap_the_list(alpha: httpx.Client, path: str) -> None:
    listed = alpha.get(path, params={"limit": 1})
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["data"]) <= 1 and isinstance(listed.json()["has_more"], bool)


@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/v1/analysis/methods", "/v1/frequency-tables"])
def test_head_answers_wherever_get_does(alpha: httpx.Client, path: str) -> None:
    got = alpha.get(path)
    head = alpha.head(path)
    assert head.status_code == got.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]
    assert head.headers["X-Request-Id"]
    assert alpha.get("/healthz").status_code == 200  # the connection still serves


def test_head_on_a_post_route_is_still_405(alpha: httpx.Client) -> None:
    response = alpha.head("/v1/score")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/batches", {"model": MODEL, "inputs": [{"text": "fine"}, {"text": ""}]}, "inputs.1.text"),
        ("/v1/bytes", {"model": MODEL, "text": ""}, "text"),
        ("/v1/decode/contrastive", {"prompt": "", "preset": PRESET, "max_tokens": 2}, "prompt"),
        ("/v1/decode/contrastive", {"prompt": "x", "views": [{"model": MODEL, "prompt": ""}]}, "views.0.prompt"),
        ("/v1/score", {"model": MODEL, "text": ""}, "text"),
    ],
)
def test_an_empty_text_is_empty_text_everywhere(
    alpha: httpx.Client, path: str, body: dict[str, Any], param: str
) -> None:
    refused(alpha.post(path, json=body), 422, "empty_text", param)


def test_the_last_tokens_own_state_is_exported_as_position_t(alpha: httpx.Client) -> None:
    """Position t's state is token t-1's; position T (the number of tokens) is the last token's, which predicts what
    follows the text: the state a generation from that text starts from."""
    from safetensors.numpy import load as st_load

    scored = alpha.post("/v1/score", json={"model": MODEL, "text": TEXT}).json()
    rid, n = scored["record_id"], scored["n_tokens"]
    kept = st_load(alpha.get(f"/v1/records/{rid}/hidden").content)["hidden"]
    assert kept.shape[0] == n - 1
    response = alpha.get(f"/v1/records/{rid}/hidden", params={"stop": n + 1})
    assert response.status_code == 200, response.text
    assert (response.headers["X-Logprobe-Start"], response.headers["X-Logprobe-Stop"]) == ("1", str(n + 1))
    every = st_load(response.content)["hidden"]
    assert every.shape == (n, kept.shape[1]) and every.dtype == kept.dtype
    np.testing.assert_allclose(every[:-1], kept, rtol=1e-4, atol=1e-4)
    last = st_load(alpha.get(f"/v1/records/{rid}/hidden", params={"start": n, "stop": n + 1}).content)["hidden"]
    np.testing.assert_array_equal(last, every[-1:])
    generated = alpha.post("/v1/generate", json={"model": MODEL, "prompt": TEXT, "max_tokens": 2, "temperature": 0})
    record = generated.json()["record_id"]
    ids = [t["id"] for t in scored["tokens"]]
    assert [t["id"] for t in alpha.get(f"/v1/records/{record}").json()["tokens"][:n]] == ids
    from_generation = st_load(alpha.get(f"/v1/records/{record}/hidden", params={"start": n, "stop": n + 1}).content)[
        "hidden"
    ]
    np.testing.assert_allclose(last, from_generation, rtol=1e-4, atol=1e-4)  # the state the completion came from
    refused(alpha.get(f"/v1/records/{rid}/hidden", params={"stop": n + 2}), 422, "invalid_positions", "stop")
    refused(alpha.get(f"/v1/records/{rid}/hidden", params={"start": 0}), 422, "invalid_request", "start")


# ------------------------------------------------------------------ item 17: a body that is not sent as JSON


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None]
)
def test_a_body_not_sent_as_json_says_so(alpha: httpx.Client, content_type: str | None) -> None:
    body = json.dumps({"model": MODEL, "text": TEXT})
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/v1/score", "/v1/heads"):  # curl -d without -H 'content-type: application/json' sends a form
        response = alpha.post(path, content=body, headers=headers)
        message = refused(response, 415, "unsupported_media_type", None)
        assert "application/json" in message and (content_type or "without a Content-Type").split(";")[0] in message
        assert "valid dictionary" not in message


@pytest.mark.parametrize(
    "headers", [{"content-type": "application/json; charset=utf-8"}, {"content-type": "application/merge-patch+json"}]
)
def test_json_bodies_pass_with_or_without_a_content_type(alpha: httpx.Client, headers: dict[str, str]) -> None:
    body = json.dumps({"model": MODEL, "text": TEXT})
    response = alpha.post("/v1/score", content=body, headers=headers)
    assert response.status_code == 200, response.text
