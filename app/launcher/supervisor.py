"""`logprobe serve`'s children kept running: a worker or the embedded Redis that dies is started again, backing off
(1 s, doubling to 30 s while it keeps dying soon after each start), and each death is logged with its exit code."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("logprobe.supervisor")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_S = 60.0  # a child that ran this long before dying starts again after FIRST_BACKOFF_S


@dataclass
class Child:
    """One supervised process: `start` starts it (again) and returns it."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF_S
    retry_at: float | None = None
    restarts: int = 0

    def launch(self) -> None:
        self.process, self.started_at, self.retry_at = self.start(), time.monotonic(), None


class Supervisor:
    """Watches its children from a thread of its own; `children` keeps their current processes.

    A child started again is the thread's child: its death signal (workers.lifecycle.die_with_parent) fires when the
    thread that started it ends. So the thread outlives the children: `stop_restarting()`, stop the children, then
    `close()`."""

    def __init__(self, children: list[Child], every_s: float = 0.5) -> None:
        self.children = children
        self.every_s = every_s
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> Supervisor:
        """Start the children not started yet, then watch them all."""
        for child in self.children:
            if child.process is None:
                child.launch()
            else:
                child.started_at = time.monotonic()
        self._thread.start()
        return self

    def stop_restarting(self) -> None:
        """From now on a child that exits stays down (the caller stops them in its own order)."""
        self._stopping.set()

    def close(self) -> None:
        """End the thread, once the children are stopped."""
        self._stopping.set()
        self._closed.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._closed.wait(self.every_s):
            if not self._stopping.is_set():
                for child in self.children:
                    self._check(child)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.retry_at is None:
            code = None if child.process is None else child.process.poll()
            if child.process is not None and code is None:
                return
            if now - child.started_at >= STABLE_S:
                child.backoff = FIRST_BACKOFF_S
            child.retry_at = now + child.backoff
            log.warning("%s exited (code %s); starting it again in %.0f s", child.name, code, child.backoff)
            child.backoff = min(2 * child.backoff, MAX_BACKOFF_S)
        if now < child.retry_at or self._stopping.is_set():
            return
        try:
            child.launch()
            child.restarts += 1
            log.warning("%s started again (restart %d)", child.name, child.restarts)
        except Exception as exc:  # e.g. Redis that did not come up: try again later
            child.process, child.retry_at = None, now + child.backoff
            child.backoff = min(2 * child.backoff, MAX_BACKOFF_S)
            log.error("%s could not be started again (%s); next try in %.0f s", child.name, exc, child.retry_at - now)
