"""Start the service under uvicorn: the ``binsearch serve`` command's body."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
import threading

from pydantic import ValidationError

from server.logs import LOG_CONFIG, configure_logging
from server.settings import LOOPBACK_HOSTS, Settings, settings_error

log = logging.getLogger("binsearch.server")

_QUIET_LIBRARIES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_host(host: str, settings: Settings) -> str:
    """The host to bind: without an API key, loopback only unless ``allow_remote`` says otherwise."""
    if is_loopback(host) or settings.api_key is not None:
        return host
    if settings.allow_remote:
        log.warning(
            json.dumps(
                {
                    "event": "open_to_network",
                    "host": host,
                    "message": "no API key is set and allow_remote is on: anyone who can reach "
                    "this host can write to the index",
                }
            )
        )
        return host
    log.warning(
        json.dumps(
            {
                "event": "loopback_only",
                "asked_host": host,
                "host": "127.0.0.1",
                "message": "no API key is set, so the server binds to loopback only; set "
                "BINSEARCH_API_KEY, or pass --allow-remote to expose it without one",
            }
        )
    )
    return "127.0.0.1"


def serve(
    collection_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    overrides: dict[str, str] | None = None,
) -> None:
    """Serve ``collection_dir`` until SIGINT/SIGTERM; shutting down snapshots pending writes.

    ``overrides`` are settings given as flags (``{"model": ..., "codec": ...}``);
    they win over ``BINSEARCH_*`` variables. The app is built by uvicorn from the
    string reference, so each worker builds its own from the environment.
    """
    import uvicorn

    if os.path.exists(collection_dir) and not os.path.isdir(collection_dir):
        raise ValueError(f"{collection_dir} is a file, not a collection directory")
    os.environ["BINSEARCH_COLLECTION_DIR"] = str(collection_dir)
    for name, value in (overrides or {}).items():
        os.environ[f"BINSEARCH_{name.upper()}"] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:
        # A bad key configuration must stop the start, in one line, before anything binds.
        raise ValueError(settings_error(exc)) from None
    configure_logging()
    _log_uncaught_as_json()
    # The model libraries write progress bars and their own plain-text log lines
    # to stderr; a server's stderr is JSON lines only (their warnings and errors
    # still arrive as Python warnings or exceptions, which are logged as JSON).
    for name, value in _QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    host = choose_host(host, settings)
    log.info(json.dumps({"event": "listening", "host": host, "port": port}))
    uvicorn.run(
        "server.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_config=LOG_CONFIG,
        access_log=False,  # the app logs one structured line per request instead
        timeout_graceful_shutdown=30,
    )


def _log_uncaught_as_json() -> None:
    """Warnings and uncaught errors of any thread as JSON lines, not bare text on stderr."""
    logging.captureWarnings(True)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        log.error(
            json.dumps({"event": "thread_error", "thread": getattr(args.thread, "name", None)}),
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )

    def main_hook(kind: type[BaseException], value: BaseException, tb: object) -> None:
        log.error(json.dumps({"event": "uncaught_error"}), exc_info=(kind, value, tb))  # type: ignore[arg-type]

    threading.excepthook = thread_hook
    sys.excepthook = main_hook
