"""Shutdown steps that cannot hold a process hostage.

A step that awaits something which never completes (a redis-py connection close waiting on its socket,
redis/redis-py#3941; a task that swallowed its cancellation) would keep `logprobe serve` in "Waiting for
application shutdown" forever, and its workers and embedded Redis with it. Each step gets a deadline; one that
overruns is abandoned and logged with the chain of awaits it was stuck in, and the next step runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("app.platform.shutdown")

STEP_S = 5.0


async def within(step: Awaitable[None], what: str, seconds: float = STEP_S) -> bool:
    """Run one shutdown step for at most `seconds`; whether it finished. A failure is logged, not raised."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        log.warning(
            "shutdown: %s did not finish within %.1f s; abandoned, awaiting:\n  %s",
            what,
            seconds,
            "\n  ".join(awaiting(task)),
        )
        task.cancel()  # not awaited: it has just shown it may never return
        return False
    if not task.cancelled() and task.exception() is not None:
        log.warning("shutdown: %s failed", what, exc_info=task.exception())
    return True


def awaiting(task: asyncio.Task[Any] | None) -> list[str]:
    """Where `task` is suspended, outermost first, following it into the task it waits on, and so on."""
    lines: list[str] = []
    while task is not None and len(lines) < 64:
        node: Any = task.get_coro()
        while node is not None:
            frame = getattr(node, "cr_frame", None) or getattr(node, "gi_frame", None)
            if frame is not None:
                lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
            node = getattr(node, "cr_await", None) or getattr(node, "gi_yieldfrom", None)
        waiter = getattr(task, "_fut_waiter", None)  # what asyncio resumes it on (both implementations have it)
        task = waiter if isinstance(waiter, asyncio.Task) else None
    return lines
