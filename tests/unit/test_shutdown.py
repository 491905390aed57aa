"""Shutdown steps are bounded: one that never returns is abandoned, named, and the next step still runs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.platform.shutdown import within


async def stubborn(cancels: list[int]) -> None:
    """A listener whose clean-up on cancellation awaits a close that never comes (redis/redis-py#3941)."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancels.append(1)
        await asyncio.Event().wait()
        raise


async def stopping_a_stubborn_task(cancels: list[int]) -> None:
    """The shape of JobQueue.stop: cancel a listener task, then wait for it."""
    listener = asyncio.create_task(stubborn(cancels))
    await asyncio.sleep(0)
    listener.cancel()
    await listener


@pytest.mark.timeout(30)
def test_a_step_that_never_returns_is_abandoned_and_the_next_runs(caplog: pytest.LogCaptureFixture) -> None:
    cancels: list[int] = []
    order: list[str] = []

    async def quick() -> None:
        order.append("quick")

    async def shutdown() -> tuple[bool, bool]:
        first = await within(stopping_a_stubborn_task(cancels), "the stubborn listener", seconds=0.3)
        second = await within(quick(), "the next step", seconds=0.3)
        return first, second

    with caplog.at_level(logging.WARNING, logger="app.platform.shutdown"):
        assert asyncio.run(shutdown()) == (False, True)  # unbounded, the first step would hang here
    assert order == ["quick"]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "the stubborn listener did not finish within 0.3 s" in message
    # the chain of awaits runs from the step into the task it waits on, down to the stuck frame
    assert "in stopping_a_stubborn_task" in message and "in stubborn" in message
    assert cancels == [1]  # asked to stop by its step; the cancel of the abandoned step ended its clean-up


def test_a_failing_step_is_logged_and_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("connection reset")

    with caplog.at_level(logging.WARNING, logger="app.platform.shutdown"):
        assert asyncio.run(within(broken(), "a broken step", seconds=1)) is True
    assert [r.getMessage() for r in caplog.records] == ["shutdown: a broken step failed"]
