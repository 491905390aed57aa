"""schemathesis against the live OpenAPI schema: thousands of generated requests, no 5xx, and every answer
matches the schema it documents (errors included). Runs on a tiny random model so each case is cheap.

Driven through schemathesis' strategies with hypothesis directly (its pytest plugin does not run on pytest 9)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from app.launcher.local_service import LocalService
from tests.conftest import ARTIFACTS, DATA_DIR

CASES_PER_OPERATION = 180
MIN_CASES = 2000


@pytest.fixture(scope="module")
def fuzz_service(tiny_models: dict[str, str]) -> Iterator[LocalService]:
    env = {
        "LOGPROBE_MODELS": json.dumps([{"name": "tiny", "source": "hf", "path": tiny_models["tiny-llama"]}]),
        "LOGPROBE_DATA_DIR": str(DATA_DIR),
        "LOGPROBE_API_KEYS": json.dumps({"fuzz-key": "fuzz"}),
        "LOGPROBE_MAX_NEW_TOKENS": "8",
        "LOGPROBE_MAX_POSITIONS": "512",
        "LOGPROBE_JOB_TIMEOUT_S": "60",
    }
    with LocalService(env=env, log_dir=ARTIFACTS / "fuzz") as service:
        yield service


def test_generated_requests_get_no_5xx_and_match_the_schema(fuzz_service: LocalService) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    headers = {"Authorization": "Bearer fuzz-key"}  # the schema, as the API, needs a key
    api = schemathesis.openapi.from_url(f"{fuzz_service.base_url}/openapi.json", headers=headers)
    ran: dict[str, int] = {}
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            ran[case.operation.label] = ran.get(case.operation.label, 0) + 1
            case.call_and_validate(
                base_url=fuzz_service.base_url,
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance],
                timeout=60,
            )

        check()
    total = sum(ran.values())
    (ARTIFACTS / "fuzz").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "fuzz" / "cases.json").write_text(json.dumps(ran, indent=1))
    assert total >= MIN_CASES, f"only {total} generated requests: {ran}"
