"""What a newcomer tripped on (#30 items 15, 16, 20, 21), on the live service: method parameters as strict as the
top level, undefined values null with a reason, errors whose `param` names the field at fault, and requests that
were wrong but answered 200."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import MODEL

TEXT = "Water boils at 100 degrees Celsius at sea level."  # the README's uncertainty example


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
