"""A sample of /v1/analysis/consistency fails alone: the error of its generation job (424) or of its lost record
becomes that sample's `error`; an error that concerns the whole request (a 422, the tenant's budget) is raised."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.platform.errors import ApiError
from app.serving.consistency import Answer, bounded, sample_or_error, sample_row, settled


async def failing(error: ApiError) -> Answer:
    raise error


@pytest.mark.parametrize(
    "error",
    [
        ApiError(424, "worker_error", "the batch step failed"),
        ApiError(424, "invalid_token_ids", "bad ids"),
        ApiError(404, "record_not_found", "record 'x' not found", "record_id"),
    ],
)
def test_a_failed_generation_is_that_samples_error(error: ApiError) -> None:
    got = asyncio.run(sample_or_error(failing(error)))
    assert got is error
    row = sample_row(3, 14, got)
    assert row == {
        "index": 3,
        "seed": 14,
        "record_id": None,
        "text": None,
        "finish_reason": None,
        "log_likelihood": None,
        "n_tokens": None,
        "error": {"code": error.code, "message": error.message},
    }


@pytest.mark.parametrize(
    "error",
    [ApiError(429, "rate_limited", "slow down"), ApiError(422, "context_length_exceeded", "too long", "prompt")],
)
def test_an_error_of_the_whole_request_is_raised(error: ApiError) -> None:
    with pytest.raises(ApiError) as raised:
        asyncio.run(sample_or_error(failing(error)))
    assert raised.value is error


def test_settled_lets_every_call_end_before_raising_the_first_error() -> None:
    ended: list[str] = []

    async def slow_ok() -> str:
        for _ in range(5):
            await asyncio.sleep(0)
        ended.append("ok")
        return "ok"

    async def fails() -> str:
        raise ApiError(429, "rate_limited", "slow down")

    with pytest.raises(ApiError, match="slow down"):
        asyncio.run(settled([fails(), slow_ok()]))
    assert ended == ["ok"]  # not cancelled: its job's waiter would have cancelled its own job on a client that left
    assert asyncio.run(settled([slow_ok(), slow_ok()])) == ["ok", "ok"]


def test_bounded_starts_nothing_after_an_error_and_raises_that_error() -> None:
    started: list[int] = []

    def call(i: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            started.append(i)
            await asyncio.sleep(0)
            if i == 1:
                raise ApiError(424, "worker_error", "failed")
            return i

        return run

    with pytest.raises(ApiError, match="failed"):
        asyncio.run(bounded([call(i) for i in range(6)], 2))
    assert started == [0, 1]
    started.clear()
    assert asyncio.run(bounded([call(i) for i in (0, 2, 3, 4)], 2)) == [0, 2, 3, 4]


def test_a_failed_sample_among_others_is_a_result_not_the_requests_error() -> None:
    """`settled` over samples: the error `sample_or_error` returns is that sample's result (it used to be raised as
    the request's, since gather cannot tell a returned exception from a raised one: end to end in
    tests/integration/test_consistency_bad_sample.py)."""
    error = ApiError(424, "worker_error", "RuntimeError")

    async def sample(text: str) -> Answer:
        return text  # type: ignore[return-value]  # stands in for an Answer: settled only passes it on

    draws = [sample_or_error(sample("a")), sample_or_error(failing(error)), sample_or_error(sample("b"))]
    assert asyncio.run(settled(draws)) == ["a", error, "b"]
    with pytest.raises(ApiError) as raised:  # raised, not returned: the request's error
        asyncio.run(settled([sample("a"), failing(error)]))
    assert raised.value is error
