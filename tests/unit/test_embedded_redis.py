"""The embedded Redis's own process: a start that fails leaves nothing running."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from app.launcher import embedded
from app.launcher.embedded import EmbeddedRedis


def test_a_server_that_never_answers_is_stopped_when_the_start_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = tmp_path / "silent-server"  # takes redis-server's arguments, opens no socket
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    monkeypatch.setattr(embedded, "redis_server_binary", lambda: silent)
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def spy(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        process = popen(*args, **kwargs)  # type: ignore[call-overload]
        started.append(process)
        return process  # type: ignore[no-any-return]

    monkeypatch.setattr(embedded.subprocess, "Popen", spy)
    server = EmbeddedRedis(tmp_path / "redis")
    with pytest.raises(redis.ConnectionError):
        server.start(timeout_s=0.2)
    assert len(started) == 1
    assert started[0].poll() is not None  # not left running
    assert server.process is None
