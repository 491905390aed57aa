"""Processes that die with their worker.

vLLM runs its engines in processes of their own (an engine core, and executor workers under it). A worker
that stops cleanly shuts them down (`close`); one that is killed outright (SIGKILL, the OOM killer) cannot, and
on Linux its children would live on as orphans holding their memory (a whole GPU's worth). So every process
started under a worker asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG): an engine core
dies with its worker, and an executor worker with its engine core.

vLLM starts these processes by spawning, which imports the parent's main module as `__mp_main__` in the child
(`workers.spawned`, which the worker names as its main for that purpose); that import calls `die_with_parent()`.
Children started by forking get the same from an at-fork hook. `arm_children` sets up both.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


# libc's prctl, looked up once in the parent: `die_with_parent` also runs as a `preexec_fn`, between fork and
# exec, where a parent's other threads may hold the locks that loading a library or logging would take.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """Ask for SIGKILL when the parent dies (Linux); if it has died already, die now. Safe between fork and exec:
    a system call and nothing else (no library loading, no logging)."""
    if _PRCTL is None:
        return
    parent = os.getppid()
    if _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os.write(2, f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}\n".encode())
        return
    if parent == 1 or os.getppid() != parent:  # the parent went before the request took hold
        os._exit(1)


def arm_children() -> None:
    """Every process this one starts from now on, forked or spawned, dies with it (and theirs with them)."""
    os.register_at_fork(after_in_child=die_with_parent)
    # What a spawned child imports as its main: multiprocessing reads the name from __main__.__spec__.
    sys.modules["__main__"].__spec__ = importlib.util.find_spec("workers.spawned")
