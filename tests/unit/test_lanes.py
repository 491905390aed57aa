"""Turns on a worker's models (workers.lanes): the main loop's work runs between heavy jobs' slices, heavy jobs of
different tenants take turns slice by slice, and a heavy job stops at the slice after its cancellation, its
deadline or the worker's stop. Real threads; orders of events are asserted, never durations."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from workers.lanes import HeavyTurn, Stopped, Turns, checkpoint


def heavy(
    turns: Turns,
    tenant: str,
    slices: int,
    log: list[str],
    cancelled: Callable[[], bool] = lambda: False,
    deadline: float | None = None,
    stopping: threading.Event | None = None,
) -> tuple[threading.Thread, list[BaseException]]:
    """A heavy job in its own thread: `slices` slices of a millisecond each, logging its tenant at each one."""
    errors: list[BaseException] = []
    turn = HeavyTurn(f"job-{tenant}-{len(log)}", tenant, deadline, cancelled, stopping or threading.Event())

    def work() -> None:
        for _ in range(slices):
            log.append(tenant)
            time.sleep(0.001)
            checkpoint()

    def body() -> None:
        try:
            turns.run(turn, work)
        except Stopped as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, errors


def test_the_main_loop_runs_between_two_slices_of_a_heavy_job() -> None:
    turns, log = Turns(1), []  # type: list[str]
    thread, _ = heavy(turns, "a", 400, log)
    while len(log) < 5:
        time.sleep(0.001)
    with turns.interactive():
        during = len(log)
        time.sleep(0.05)  # the heavy job waits at its checkpoint meanwhile
        assert len(log) == during
    thread.join()
    assert 5 <= during < 400 and len(log) == 400


def test_heavy_jobs_of_two_tenants_take_turns_slice_by_slice() -> None:
    turns, log = Turns(1), []  # type: list[str]
    with turns.interactive():  # all three wait for the turn, then share it
        jobs = [heavy(turns, "a", 30, log), heavy(turns, "a", 30, log), heavy(turns, "b", 30, log)]
        while len(turns._waiting) < 3:
            time.sleep(0.001)
    for thread, _ in jobs:
        thread.join()
    first = log[:40]  # while b runs, every other slice is b's, whatever a has queued
    assert first.count("b") >= 19 and all(x != y for x, y in itertools.pairwise(first) if "b" in (x, y))


def test_a_cancelled_heavy_job_stops_at_its_next_slice() -> None:
    turns, log = Turns(1), []  # type: list[str]
    flag = threading.Event()
    thread, errors = heavy(turns, "a", 10_000, log, cancelled=flag.is_set)
    while len(log) < 3:
        time.sleep(0.001)
    flag.set()
    thread.join()
    assert len(log) < 10_000 and isinstance(errors[0], Stopped) and errors[0].reason == "cancelled"


@pytest.mark.parametrize("reason", ["deadline", "stopping"])
def test_a_heavy_job_past_its_deadline_or_on_a_stopping_worker_does_not_start(reason: str) -> None:
    turns, log = Turns(1), []  # type: list[str]
    stopping = threading.Event()
    if reason == "stopping":
        stopping.set()
    deadline = time.time() - 1 if reason == "deadline" else None
    thread, errors = heavy(turns, "a", 10, log, deadline=deadline, stopping=stopping)
    thread.join()
    assert log == [] and errors[0].reason == reason  # type: ignore[attr-defined]


def test_a_checkpoint_outside_a_heavy_job_does_nothing() -> None:
    checkpoint()  # the main loop, tests and tools call the same code
