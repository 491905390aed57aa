"""The main module of every process that vLLM spawns under a worker (see `workers.lifecycle`).

A spawned child imports its parent's main module as `__mp_main__`, except a package's `__main__`, which it
skips; so the worker names this module as its main for spawning, and each child it spawns, and each of theirs,
runs the lines below first.
"""

from workers.lifecycle import die_with_parent

if __name__ == "__mp_main__":
    die_with_parent()
