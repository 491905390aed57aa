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
from collections.abc import Iterator
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
    """Run the gateway; with no REDIS_URL, also a private Redis; and `workers` CPU worker processes. The workers
    and the private Redis are started again when they die; SIGTERM stops everything as Ctrl-C does."""
    import shutil
    import tempfile

    import uvicorn

    from app.api.gateway import create_app
    from app.launcher.embedded import EmbeddedRedis, RedisInUse, default_maxmemory
    from app.launcher.supervisor import Child, Supervisor
    from app.platform.connections import HTTP_PROTOCOL
    from app.platform.settings import Settings, open_on_loopback
    from workers.lifecycle import die_with_parent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    open_on_loopback(settings, host or settings.host)  # no keys: anonymous on a loopback address only, else exit
    host, port = host or settings.host, port or settings.port
    if not _port_free(host, port):  # before anything is started or touched
        raise _fail(f"port {port} on {host} is in use (another logprobe serve?); refusing to start", 1)
    supervised = []
    embedded = None
    if not settings.redis_url:
        folder = (settings.embedded_redis_dir or settings.data_dir / "redis") / str(port)
        maxmemory = settings.embedded_redis_maxmemory or default_maxmemory()
        embedded = EmbeddedRedis(folder, maxmemory, settings.embedded_redis_persist)
        try:
            settings.redis_url = embedded.start()
        except RedisInUse as exc:
            raise _fail(f"{exc} (another logprobe serve?); refusing to start", 1) from exc
        log.info("embedded Redis at %s (maxmemory %s, persisted: %s)", settings.redis_url, maxmemory, embedded.persist)
        supervised.append(Child("embedded Redis", lambda: _restarted(embedded), embedded.process))
    env = {**os.environ, "REDIS_URL": settings.redis_url}

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "workers"], env=env, preexec_fn=die_with_parent)

    supervised += [Child(f"worker {i}", start_worker) for i in range(workers)]
    supervisor = Supervisor(supervised).start()
    signal.signal(signal.SIGTERM, _stop_on_term)  # uvicorn re-raises it after its own shutdown: then we clean up
    metrics_dir = None
    try:
        if gateway_workers == 1:
            uvicorn.run(
                create_app(settings),
                host=host,
                port=port,
                log_level="info",
                http=HTTP_PROTOCOL,  # head size and connection deadlines (app/platform/connections.py)
                timeout_keep_alive=settings.keep_alive_s,
                timeout_graceful_shutdown=settings.shutdown_grace_s,
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
                http=HTTP_PROTOCOL,  # head size and connection deadlines (app/platform/connections.py)
                timeout_keep_alive=settings.keep_alive_s,
                timeout_graceful_shutdown=settings.shutdown_grace_s,
            )
    finally:
        supervisor.stop_restarting()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        children = [c.process for c in supervised if c.process is not None and c.name.startswith("worker")]
        for child in children:
            child.send_signal(signal.SIGTERM)  # each drains: heavy jobs stop at their next slice, left for later
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.stop()
        supervisor.close()  # last: what it started again dies with its thread


def _port_free(host: str, port: int) -> bool:
    """Whether the gateway could bind host:port now (as uvicorn binds: with SO_REUSEADDR)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _restarted(embedded: Any) -> subprocess.Popen[bytes]:
    embedded.start()
    return embedded.process  # type: ignore[no-any-return]


def _stop_on_term(signum: int, frame: Any) -> None:
    """SIGTERM ends `serve` through its clean-up, as Ctrl-C does (the default action would skip it)."""
    raise KeyboardInterrupt


@app.command()
def worker(model: Annotated[list[str] | None, typer.Option(help="serve only these configured models")] = None) -> None:
    """Run one worker that joins the consumer group of its models (needs REDIS_URL)."""
    from workers.runner import main as worker_main

    worker_main([arg for name in model or [] for arg in ("--model", name)])


@app.command("worker-alive")
def worker_alive() -> None:
    """Exit 0 when a worker on this host has announced its models in Redis (a container health check)."""
    import socket

    from workers.config import CommonSettings
    from workers.contract.heartbeats import alive_on_host
    from workers.redis_client import REDIS_ERRORS, connect

    settings = CommonSettings()
    if not settings.redis_url:
        raise typer.Exit(2)
    try:
        client = connect(settings.redis_url, settings.redis_cluster, socket_timeout=3, **settings.redis_auth())
        alive = alive_on_host(client, socket.gethostname(), time.time())
    except REDIS_ERRORS:
        alive = False
    raise typer.Exit(0 if alive else 1)


# ------------------------------------------------------------------ batch verbs over JSONL
#
# Every non-blank input line gets one output line, in order: its answer, or {"line": n, "error": {...}} (a line
# that is not a JSON object, or one the service refused); `line` is the input's line number in its file (from 1,
# blank lines counted, as an editor numbers them). Exit codes: 0 every line answered, 1 some line failed
# (or the batch was refused or cancelled), 2 the input could not be read or the service not reached.

UrlOpt = Annotated[str, typer.Option(envvar="LOGPROBE_URL", help="the service")]
KeyOpt = Annotated[str | None, typer.Option(envvar="LOGPROBE_API_KEY", help="API key")]
InputArg = Annotated[str, typer.Argument(help="JSONL file of requests, or - for stdin")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="JSONL file for the answers, or - for stdout")]
ModelOpt = Annotated[str, typer.Option(help="model for lines that name none")]
ConcurrencyOpt = Annotated[int, typer.Option(min=1, max=64, help="requests in flight")]
DEFAULT_URL = "http://127.0.0.1:8000"
BATCH_FIELDS = {"text", "messages", "custom_id"}


class LineError(Exception):
    """One input line that cannot be sent: becomes that line's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


Line = dict[str, Any] | LineError


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"logprobe: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _one_line_errors(url: str) -> Iterator[None]:
    """An unreachable service or an unreadable file: one line on stderr and exit code 2, no traceback."""
    import httpx

    from logprobe.client import LogprobeError

    try:
        yield
    except httpx.TransportError as exc:
        raise _fail(f"cannot reach {url}: {exc or type(exc).__name__}", 2) from None
    except OSError as exc:
        raise _fail(str(exc), 2) from None
    except LogprobeError as exc:
        raise _fail(str(exc), 1) from None


def _error(index: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"line": index, **extra, "error": {"code": code, "message": message}}


def _run_jsonl(
    path: str, source: str, output: str, url: str, api_key: str | None, model: str | None, concurrency: int
) -> None:
    """POST each JSONL line to `path`; write one JSONL answer per line, in order, errors included. A line's
    `custom_id` is not sent: it is echoed in its answer."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from rich.console import Console
    from rich.progress import Progress

    from logprobe.client import Client, LogprobeError

    failed = False
    with _one_line_errors(url), contextlib.ExitStack() as stack:
        requests = _read_jsonl(source)
        client = stack.enter_context(Client(url, api_key))
        client.http.get("/healthz")  # unreachable: one line and exit 2 before anything is written
        sink = _sink(stack, output)
        pool = stack.enter_context(ThreadPoolExecutor(concurrency))
        progress = stack.enter_context(Progress(console=Console(stderr=True)))
        task = progress.add_task(path, total=len(requests))

        def call(item: tuple[int, Line]) -> dict[str, Any]:
            index, request = item  # index: the line number in the file
            try:
                if isinstance(request, LineError):
                    return _error(index, request.code, request.message)
                body = {k: v for k, v in request.items() if k != "custom_id"}
                echo = {"custom_id": request["custom_id"]} if "custom_id" in request else {}
                if model is not None:
                    body = {"model": model, **body}
                try:
                    return {"line": index, **echo, **client.post(path, body)}
                except LogprobeError as exc:
                    error = {"status": exc.status, "code": exc.code, "message": exc.message}
                except httpx.TransportError as exc:
                    error = {"code": "connection_error", "message": str(exc) or type(exc).__name__}
                return {"line": index, **echo, "error": error}
            finally:
                progress.advance(task)

        for answer in pool.map(call, requests):
            failed |= answer.get("error") is not None
            sink.write(json.dumps(answer) + "\n")
    if failed:
        raise typer.Exit(1)


@app.command()
def score(
    source: InputArg = "-",
    output: OutputOpt = "-",
    model: ModelOpt = "smollm2-135m-instruct",
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    concurrency: ConcurrencyOpt = 4,
) -> None:
    """Score texts: each line {"text": ...} or {"messages": [...]} (and optionally "model", "top_logprobs",
    "custom_id")."""
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
    """Run server-side batches (POST /v1/batches): each line {"text": ...} or {"messages": [...]}, optionally
    "custom_id" and "model" (one batch per model); waits with a progress bar, then writes one result line per
    input line, in order (`index` is the input line's). Lines the batches cannot take get an error line."""
    from rich.console import Console
    from rich.progress import Progress

    from logprobe.client import Client, LogprobeError

    with _one_line_errors(url), contextlib.ExitStack() as stack:
        lines = _read_jsonl(source)
        analyses = [_analysis_spec(a) for a in analysis or []]
        client = stack.enter_context(Client(url, api_key))
        client.http.get("/healthz")
        out: dict[int, dict[str, Any]] = {}
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for index, (_, line) in enumerate(lines):
            try:
                item = _batch_input(line)
                groups.setdefault(item.pop("model", None) or model, []).append((index, item))
            except LineError as exc:
                out[index] = _batch_line(index, lines[index][0], None, {"code": exc.code, "message": exc.message})
        created = []
        for name, members in groups.items():
            try:
                created.append((client.create_batch(name, [item for _, item in members], analyses=analyses), members))
            except LogprobeError as exc:
                typer.echo(f"batch refused: {exc.status} {exc.code}: {exc.message}", err=True)
                error = {"status": exc.status, "code": exc.code, "message": exc.message}
                out.update({i: _batch_line(i, lines[i][0], item.get("custom_id"), error) for i, item in members})
        progress = stack.enter_context(Progress(console=Console(stderr=True)))
        done: dict[str, int] = {}
        task = progress.add_task("batch " + ", ".join(b.id for b, _ in created), total=sum(b.total for b, _ in created))

        def seen(status: Any) -> None:
            done[status.id] = status.completed + status.failed + status.cancelled
            progress.update(task, completed=sum(done.values()))

        cancelled = False
        for batch_, members in created:
            cancelled |= client.wait_batch(batch_.id, poll_s=poll, on_status=seen).status == "cancelled"
            for result in client.batch_results(batch_.id):
                index = members[result["index"]][0]
                out[index] = {"line": lines[index][0], **result, "index": index}
        sink = _sink(stack, output)
        for index in range(len(lines)):
            sink.write(json.dumps(out[index]) + "\n")
    if cancelled or any(line.get("error") is not None for line in out.values()):
        raise typer.Exit(1)


def _batch_input(line: Line) -> dict[str, Any]:
    """A JSONL line as one input of a batch (with its `model`, if it names one), or the LineError it is."""
    from pydantic import ValidationError

    from logprobe.schemas.batches import BatchInput

    if isinstance(line, LineError):
        raise line
    if line.get("top_logprobs") is not None:
        raise LineError("unsupported_field", "batches answer analyses, not top_logprobs: use `logprobe score`")
    extra = set(line) - BATCH_FIELDS - {"model", "top_logprobs"}
    if extra:
        raise LineError("invalid_request", f"unknown fields for a batch input: {', '.join(sorted(extra))}")
    try:
        BatchInput.model_validate({k: v for k, v in line.items() if k in BATCH_FIELDS})
    except ValidationError as exc:
        raise LineError("invalid_request", "; ".join(e["msg"] for e in exc.errors())) from None
    return {k: v for k, v in line.items() if k in BATCH_FIELDS or k == "model"}


def _batch_line(index: int, line: int, custom_id: Any, error: dict[str, Any]) -> dict[str, Any]:
    return {"line": line, "index": index, "custom_id": custom_id, "record_id": None, "results": None, "error": error}


def _read_jsonl(source: str) -> list[tuple[int, Line]]:
    """Each non-blank line of a JSONL file (or of stdin for `-`) with its line number in the file (from 1, blank
    lines counted): its JSON object, or a LineError."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    return [(number, _parse_line(line)) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _parse_line(line: str) -> Line:
    try:
        parsed = json.loads(line)
    except ValueError as exc:
        return LineError("invalid_json", f"not JSON: {exc}")
    return parsed if isinstance(parsed, dict) else LineError("invalid_json", "not a JSON object")


def _sink(stack: contextlib.ExitStack, output: str) -> TextIO:
    """Where answers go: stdout for `-`, else the file (closed with the stack)."""
    return sys.stdout if output == "-" else stack.enter_context(open(output, "w", encoding="utf-8"))


def _analysis_spec(spec: str) -> dict[str, object]:
    """`detect`, `detect:fast_detectgpt,log_rank` or a JSON object, as one entry of a batch's `analyses`."""
    if spec.lstrip().startswith("{"):
        try:
            parsed = json.loads(spec)
        except ValueError as exc:
            raise _fail(f"--analysis {spec!r} is not JSON: {exc}", 2) from None
        if not isinstance(parsed, dict):
            raise _fail(f"--analysis {spec!r} is not a JSON object", 2)
        return parsed
    family, _, methods = spec.partition(":")
    return {"family": family, **({"methods": methods.split(",")} if methods else {})}


def main() -> None:
    app()


if __name__ == "__main__":
    main()
