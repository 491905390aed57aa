"""`logprobe serve` (the embedded default: Redis, a CPU worker and the gateway) and `logprobe worker`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, help="logprobe: full next-token distributions over HTTP.")
log = logging.getLogger("logprobe")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    workers: Annotated[int, typer.Option(help="worker processes to start beside the gateway")] = 1,
) -> None:
    """Run the gateway; with no REDIS_URL, also a private Redis; and `workers` CPU worker processes."""
    import uvicorn

    from app.embedded import EmbeddedRedis
    from app.main import create_app
    from app.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir / "redis" / str(port or settings.port))
        settings.redis_url = embedded.start()
        log.info("embedded Redis at %s", settings.redis_url)
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    children = [subprocess.Popen([sys.executable, "-m", "workers"], env=env) for _ in range(workers)]
    try:
        uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port, log_level="info")
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.stop()


@app.command()
def worker(model: Annotated[list[str] | None, typer.Option(help="serve only these configured models")] = None) -> None:
    """Run one worker that joins the consumer group of its models (needs REDIS_URL)."""
    from workers.runner import main as worker_main

    worker_main([arg for name in model or [] for arg in ("--model", name)])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
