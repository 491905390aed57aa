"""Turns on a worker's models: work a client waits on first, heavy jobs in slices, taking turns by tenant.

A worker runs one thing on its models at a time. The main loop (scoring, generation, token-level contrastive steps)
takes the turn whenever it has work. Each heavy job (head training, attribution, byte-level work, exports and
cross-model statistics) runs in a thread of its own and holds the turn for one slice only: a group of forward
passes, a mini-batch, a group of records. At the end of a slice (`checkpoint()`) it hands the turn on if anyone
waits for it: to the main loop first, else to the waiting heavy job whose tenant was served least recently. There,
too, it checks its deadline, its cancellation (DELETE, a 504, a client gone) and whether the worker is stopping,
and ends with `Stopped` if any holds: within one slice of the signal.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from workers.contract.jobs import JobError

log = logging.getLogger(__name__)

CANCEL_CHECK_S = 0.5  # how often a heavy job asks Redis whether it was cancelled
StopReason = Literal["cancelled", "deadline", "stopping"]


class Stopped(BaseException):
    """A heavy job ended at a slice boundary. A BaseException, like KeyboardInterrupt: the handlers' own
    `except Exception` (which turn failures into a job's error) let it through."""

    def __init__(self, reason: StopReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(eq=False)
class HeavyTurn:
    """One heavy job's place in the turns: who it is for, until when, and how to learn it was cancelled."""

    job_id: str
    tenant: str
    deadline: float | None
    cancelled: Callable[[], bool]
    stopping: threading.Event
    seq: int = 0
    turns: int = 0  # how often it got the models (an uncontended slice keeps them)
    _checked_at: float = field(default=0.0, repr=False)

    def check(self) -> None:
        """Raise Stopped if the worker stops, the deadline passed or the job was cancelled (asked at most every
        CANCEL_CHECK_S)."""
        if self.stopping.is_set():
            raise Stopped("stopping", "the worker is stopping; another delivery takes the job over")
        now = time.time()
        if self.deadline is not None and now > self.deadline:
            raise Stopped("deadline", "the job ran past its deadline")
        if now - self._checked_at >= CANCEL_CHECK_S:
            self._checked_at = now
            if self.cancelled():
                raise Stopped("cancelled", "the job was cancelled")


def stopped_error(reason: Literal["cancelled", "deadline"], message: str) -> JobError:
    """The answer of a job that was cancelled (499, as nginx calls a client gone) or ran out of time (504)."""
    if reason == "cancelled":
        return JobError(code="cancelled", message=message, status=499)
    return JobError(code="deadline_exceeded", message=message, status=504)


_INTERACTIVE = object()
_current = threading.local()


class Turns:
    """Who runs on the models now: the main loop's interactive work, or one heavy job's slice."""

    def __init__(self, interactive_threads: int | None = None) -> None:
        self._cond = threading.Condition()
        self._holder: object | None = None
        self._wanted = 0  # main-loop entries waiting for the turn
        self._waiting: list[HeavyTurn] = []
        self._served: dict[str, int] = {}  # tenant -> when it last got a slice (a counter)
        self._clock = itertools.count()
        self._threads = interactive_threads or torch.get_num_threads()

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """The turn for the main loop: granted as soon as the current slice ends."""
        with self._cond:
            self._wanted += 1
            try:
                while self._holder is not None:
                    self._cond.wait()
            finally:
                self._wanted -= 1
            self._holder = _INTERACTIVE
        if torch.get_num_threads() != self._threads:  # a head's training runs its small networks on one thread
            torch.set_num_threads(self._threads)
        try:
            yield
        finally:
            self._release()

    def run(self, turn: HeavyTurn, work: Callable[[], None]) -> None:
        """Run `work` (in the calling thread, a heavy job's own) in slices: it calls `checkpoint()` between them.
        Raises Stopped when a checkpoint (or the check before the first slice) says so."""
        turn.seq = next(self._clock)
        _current.turn, _current.turns = turn, self
        try:
            self._acquire(turn)
            try:
                turn.check()
                work()
            finally:
                self._release()
        finally:
            _current.turn = _current.turns = None

    def _acquire(self, turn: HeavyTurn) -> None:
        with self._cond:
            self._waiting.append(turn)
            try:
                while not (self._holder is None and self._wanted == 0 and self._next() is turn):
                    self._cond.wait()
            finally:
                self._waiting.remove(turn)
            self._holder = turn
            self._served[turn.tenant] = next(self._clock)
            turn.turns += 1

    def _release(self) -> None:
        with self._cond:
            self._holder = None
            self._cond.notify_all()

    def _next(self) -> HeavyTurn:
        """The waiting heavy job whose tenant was served least recently (then the oldest job)."""
        return min(self._waiting, key=lambda t: (self._served.get(t.tenant, -1), t.seq))

    def _contended(self, turn: HeavyTurn) -> bool:
        with self._cond:
            return self._wanted > 0 or any(other is not turn for other in self._waiting)

    def hand_on(self, turn: HeavyTurn) -> None:
        """End a slice: check the job, and let others run first if any wait."""
        turn.check()
        if not self._contended(turn):
            return
        threads = torch.get_num_threads()
        self._release()
        self._acquire(turn)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        turn.check()


def checkpoint() -> None:
    """The end of a slice of heavy work: a no-op outside a heavy job's thread (the main loop, tests, tools)."""
    turn: HeavyTurn | None = getattr(_current, "turn", None)
    if turn is not None:
        _current.turns.hand_on(turn)
