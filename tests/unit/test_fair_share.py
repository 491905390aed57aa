"""Turns in the job queue (app/serving/fair_share.py) on a real event loop: a tenant holds at most its share,
its other requests take turns in arrival order, another tenant never waits behind them, and a request that
leaves while waiting (or just as its turn comes) gives nothing away."""

from __future__ import annotations

import asyncio

from app.serving.fair_share import FairShare


async def hold(share: FairShare, tenant: str, started: list[str], release: asyncio.Event, name: str) -> None:
    async with share.turn(tenant, "m"):
        started.append(name)
        await release.wait()


async def test_a_busy_tenant_holds_its_share_and_another_tenant_goes_straight_in() -> None:
    share, started = FairShare(2), []
    releases = {f"a{i}": asyncio.Event() for i in range(5)}
    tasks = [asyncio.create_task(hold(share, "a", started, releases[name], name)) for name in releases]
    await asyncio.sleep(0.01)
    assert started == ["a0", "a1"] and share.held("a", "m") == 2 and share.waiting("a", "m") == 3
    other = asyncio.Event()
    b = asyncio.create_task(hold(share, "b", started, other, "b0"))
    await asyncio.sleep(0.01)
    assert started == ["a0", "a1", "b0"]  # not behind a2..a4
    assert share.held("a", "m") == 2 and share.held("b", "m") == 1
    releases["a1"].set()
    await asyncio.sleep(0.01)
    assert started == ["a0", "a1", "b0", "a2"]  # the turn went to the next in arrival order
    for event in (*releases.values(), other):
        event.set()
    await asyncio.gather(*tasks, b)
    assert started[4:] == ["a3", "a4"]
    assert (share.held("a", "m"), share.waiting("a", "m"), share._held, share._waiting) == (0, 0, {}, {})


async def test_shares_are_per_model() -> None:
    share = FairShare(1)
    async with share.turn("a", "m"), share.turn("a", "other"):  # another model's queue: its own turns
        assert share.held("a", "m") == share.held("a", "other") == 1
    assert share._held == {}


async def test_a_request_cancelled_while_waiting_gives_nothing_away() -> None:
    share, started, release = FairShare(1), [], asyncio.Event()
    first = asyncio.create_task(hold(share, "a", started, release, "first"))
    waiting = asyncio.create_task(hold(share, "a", started, release, "left"))
    last = asyncio.create_task(hold(share, "a", started, release, "last"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.sleep(0.01)
    assert share.waiting("a", "m") == 1
    release.set()
    await asyncio.gather(first, last)
    assert started == ["first", "last"] and share._held == {} and share._waiting == {}


async def test_a_turn_handed_to_a_request_cancelled_at_that_moment_passes_on() -> None:
    share, started, release = FairShare(1), [], asyncio.Event()
    gate = asyncio.Event()
    second = asyncio.create_task(asyncio.sleep(0))  # replaced below, once `first` holds the turn

    async def first_then_cancel_second() -> None:
        async with share.turn("a", "m"):
            started.append("first")
            await gate.wait()
        second.cancel()  # the turn was just handed to `second`, which has not run since

    first = asyncio.create_task(first_then_cancel_second())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(hold(share, "a", started, release, "second"))
    third = asyncio.create_task(hold(share, "a", started, release, "third"))
    await asyncio.sleep(0.01)
    gate.set()
    release.set()
    await asyncio.gather(first, second, third, return_exceptions=True)
    assert second.cancelled()
    assert started == ["first", "third"] and share._held == {} and share._waiting == {}


async def test_a_request_cancelled_just_before_a_turn_passes_it_by_leaves_cleanly() -> None:
    share, started, release = FairShare(1), [], asyncio.Event()
    first = asyncio.create_task(hold(share, "a", started, release, "first"))
    await asyncio.sleep(0.01)
    left = asyncio.create_task(hold(share, "a", started, asyncio.Event(), "left"))
    await asyncio.sleep(0.01)
    release.set()  # `first` wakes first and ends its turn, which skips `left`'s future, cancelled just below
    left.cancel()
    results = await asyncio.gather(first, left, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], asyncio.CancelledError)  # not a ValueError
    assert started == ["first"] and share._held == {} and share._waiting == {}
