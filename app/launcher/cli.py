"""`logprobe serve` (the embedded default: Redis, a CPU worker and the gateway) and `logprobe worker`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

app = typer.Typer(add_completion=False, help="logprobe: full next-token distributions over HTTP.")
log = logging.getLogger("logprobe")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    workers: Annotated[int, typer.Option(help="worker processes to start beside the gateway")] = 1,
    gateway_workers: Annotated[
        int, typer.Option(min=1, envvar="LOGPROBE_GATEWAY_WORKERS", help="gateway processes sharing the port")
    ] = 1,
) -> None:
    """Run the gateway; with no REDIS_URL, also a private Redis; and `workers` CPU worker processes."""
    import shutil
    import tempfile

    import uvicorn

    from app.api.gateway import create_app
    from app.launcher.embedded import EmbeddedRedis
    from app.platform.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir / "redis" / str(port or settings.port))
        settings.redis_url = embedded.start()
        log.info("embedded Redis at %s", settings.redis_url)
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    children = [subprocess.Popen([sys.executable, "-m", "workers"], env=env) for _ in range(workers)]
    host, port = host or settings.host, port or settings.port
    metrics_dir = None
    try:
        if gateway_workers == 1:
            uvicorn.run(
                create_app(settings), host=host, port=port, log_level="info", timeout_keep_alive=settings.keep_alive_s
            )
        else:  # each process builds its app from the environment; their metrics meet in one folder
            metrics_dir = tempfile.mkdtemp(prefix="logprobe-metrics-")
            os.environ.update({"REDIS_URL": settings.redis_url, "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
            uvicorn.run(
                "app.api.gateway:create_app",
                factory=True,
                workers=gateway_workers,
                host=host,
                port=port,
                log_level="info",
                timeout_keep_alive=settings.keep_alive_s,
            )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
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


@app.command("worker-alive")
def worker_alive() -> None:
    """Exit 0 when a worker on this host has announced its models in Redis (a container health check)."""
    import socket

    import redis

    from workers.config import CommonSettings
    from workers.protocol import alive_on_host

    settings = CommonSettings()
    if not settings.redis_url:
        raise typer.Exit(2)
    try:
        alive = alive_on_host(redis.Redis.from_url(settings.redis_url, socket_timeout=3), socket.gethostname())
    except redis.RedisError:
        alive = False
    raise typer.Exit(0 if alive else 1)


# ------------------------------------------------------------------ batch verbs over JSONL

UrlOpt = Annotated[str, typer.Option(envvar="LOGPROBE_URL", help="the service")]
KeyOpt = Annotated[str | None, typer.Option(envvar="LOGPROBE_API_KEY", help="API key")]
InputArg = Annotated[str, typer.Argument(help="JSONL file of requests, or - for stdin")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="JSONL file for the answers, or - for stdout")]
ModelOpt = Annotated[str, typer.Option(help="model for lines that name none")]
ConcurrencyOpt = Annotated[int, typer.Option(min=1, max=64, help="requests in flight")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _run_jsonl(
    path: str, source: str, output: str, url: str, api_key: str | None, model: str | None, concurrency: int
) -> None:
    """POST each JSONL line to `path`; write one JSONL answer per line, in order, errors included."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.console import Console
    from rich.progress import Progress

    from app.client import Client, LogprobeError

    requests = _read_jsonl(source)
    if model is not None:
        requests = [{"model": model, **r} for r in requests]
    with contextlib.ExitStack() as stack:
        sink = _sink(stack, output)
        client = stack.enter_context(Client(url, api_key))
        pool = stack.enter_context(ThreadPoolExecutor(concurrency))
        progress = stack.enter_context(Progress(console=Console(stderr=True)))
        task = progress.add_task(path, total=len(requests))

        def call(request: dict[str, object]) -> dict[str, object]:
            try:
                answer: dict[str, object] = client.post(path, request)
            except LogprobeError as exc:
                answer = {"error": {"status": exc.status, "code": exc.code, "message": exc.message}}
            progress.advance(task)
            return answer

        for i, answer in enumerate(pool.map(call, requests)):
            sink.write(json.dumps({"line": i, **answer}) + "\n")


@app.command()
def score(
    source: InputArg = "-",
    output: OutputOpt = "-",
    model: ModelOpt = "smollm2-135m-instruct",
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    concurrency: ConcurrencyOpt = 4,
) -> None:
    """Score texts: each line {"text": ...} or {"messages": [...]} (and optionally "model", "top_logprobs")."""
    _run_jsonl("/v1/score", source, output, url, api_key, model, concurrency)


@app.command()
def generate(
    source: InputArg = "-",
    output: OutputOpt = "-",
    model: ModelOpt = "smollm2-135m-instruct",
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    concurrency: ConcurrencyOpt = 2,
) -> None:
    """Generate: each line {"prompt": ...} or {"messages": [...]} with sampling fields."""
    _run_jsonl("/v1/generate", source, output, url, api_key, model, concurrency)


@app.command()
def analyze(
    family: Annotated[str, typer.Argument(help="uncertainty, detect, membership or compare")],
    source: InputArg = "-",
    output: OutputOpt = "-",
    model: ModelOpt = "smollm2-135m-instruct",
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    concurrency: ConcurrencyOpt = 4,
) -> None:
    """Analyse: each line an analysis request ({"text": ...} or {"record_id": ...}, methods, params, span)."""
    _run_jsonl(f"/v1/analysis/{family}", source, output, url, api_key, model, concurrency)


@app.command()
def decode(
    source: InputArg = "-",
    output: OutputOpt = "-",
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    concurrency: ConcurrencyOpt = 1,
) -> None:
    """Contrastive decoding: each line {"prompt": ..., "preset": {...}} or with "views"."""
    _run_jsonl("/v1/decode/contrastive", source, output, url, api_key, None, concurrency)


@app.command()
def batch(
    source: InputArg = "-",
    output: OutputOpt = "-",
    analysis: Annotated[
        list[str] | None,
        typer.Option(help='an analysis per input: a family ("detect"), family:method,method, or a JSON object'),
    ] = None,
    model: ModelOpt = "smollm2-135m-instruct",
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    poll: Annotated[float, typer.Option(min=0.1, help="seconds between progress checks")] = 1.0,
) -> None:
    """Run a server-side batch (POST /v1/batches): each line {"text": ...} or {"messages": [...]}, optionally
    "custom_id"; waits with a progress bar, then writes the batch's JSONL results."""
    from rich.console import Console
    from rich.progress import Progress

    from app.client import Client, LogprobeError

    inputs = _read_jsonl(source)
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(Client(url, api_key))
        try:
            created = client.create_batch(model, inputs, analyses=[_analysis_spec(a) for a in analysis or []])
        except LogprobeError as exc:
            typer.echo(f"batch refused: {exc.status} {exc.code}: {exc.message}", err=True)
            raise typer.Exit(1) from exc
        progress = stack.enter_context(Progress(console=Console(stderr=True)))
        task = progress.add_task(f"batch {created.id}", total=created.total)
        status = client.wait_batch(
            created.id, poll_s=poll, on_status=lambda s: progress.update(task, completed=s.completed + s.failed)
        )
        sink = _sink(stack, output)
        for line in client.batch_results(created.id):
            sink.write(json.dumps(line) + "\n")
    if status.status == "cancelled":
        raise typer.Exit(1)


def _read_jsonl(source: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, or of stdin for `-` (blank lines skipped)."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _sink(stack: contextlib.ExitStack, output: str) -> TextIO:
    """Where answers go: stdout for `-`, else the file (closed with the stack)."""
    return sys.stdout if output == "-" else stack.enter_context(open(output, "w", encoding="utf-8"))


def _analysis_spec(spec: str) -> dict[str, object]:
    """`detect`, `detect:fast_detectgpt,log_rank` or a JSON object, as one entry of a batch's `analyses`."""
    if spec.lstrip().startswith("{"):
        parsed: dict[str, object] = json.loads(spec)
        return parsed
    family, _, methods = spec.partition(":")
    return {"family": family, **({"methods": methods.split(",")} if methods else {})}


def main() -> None:
    app()


if __name__ == "__main__":
    main()
