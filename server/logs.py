"""Structured logging: one JSON object per line, and one line per request."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("binsearch.server")


class JsonLines(logging.Formatter):
    """``{"ts", "level", ...}``; a message that is itself a JSON object is merged in.

    Records of other loggers (uvicorn, warnings) carry ``"logger"``; a traceback
    is one string field, ``"exception"``, so every record stays one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        if record.name != log.name:
            out["logger"] = record.name
        try:
            parsed = json.loads(message) if message.startswith("{") else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            out.update(parsed)
        else:
            out["message"] = message
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(out, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (from a client's text) cannot be written as UTF-8;
            # escaped, it stays one valid JSON line instead of a logging error.
            line = json.dumps(out)
        return line


# uvicorn's own loggers (start-up, errors with their tracebacks, access lines)
# and everything else that reaches the root logger, as JSON lines on stderr.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "server.logs.JsonLines"}},
    "handlers": {
        "json": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["json"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["json"], "level": "INFO", "propagate": False},
    },
    "root": {"handlers": ["json"], "level": "WARNING"},
}


def configure_logging() -> None:
    """Give the server's and the collection's loggers a JSON-lines handler on stderr (once)."""
    # The collection logs its snapshots (and failed background snapshots) itself.
    for logger in (log, logging.getLogger("binsearch.collection")):
        if not any(getattr(h, "_binsearch", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonLines())
            handler._binsearch = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class RequestLog:
    """Log ``method, route, status, latency`` of every HTTP request (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            log.info(
                json.dumps(
                    {
                        "event": "request",
                        "method": scope["method"],
                        "route": getattr(route, "path", None) or scope["path"],
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1e3, 2),
                    }
                )
            )
