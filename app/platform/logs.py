"""Structured JSON logs, each line carrying the request id of the request it belongs to."""

from __future__ import annotations

import json
import logging
import os
import time
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
            "pid": os.getpid(),  # which gateway process, when several share the port
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(json_logs: bool) -> None:
    """JSON lines on stderr for the gateway's loggers (uvicorn's own access log stays as it is)."""
    logger = logging.getLogger("app")
    if json_logs and not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.handlers = [handler]
        logger.propagate = False
    logger.setLevel(logging.INFO)


def log_request(method: str, path: str, status: int, started: float) -> None:
    logging.getLogger("app.access").info(
        "%s %s %d",
        method,
        path,
        status,
        extra={
            "fields": {
                "method": method,
                "path": path,
                "status": status,
                "ms": round(1000 * (time.perf_counter() - started), 1),
            }
        },
    )
