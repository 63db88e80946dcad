"""Start the service under uvicorn: the ``binsearch serve`` command's body."""

from __future__ import annotations

import ipaddress
import json
import logging
import os

from server.logs import configure_logging
from server.settings import LOOPBACK_HOSTS, Settings

log = logging.getLogger("binsearch.server")


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
    index_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    overrides: dict[str, str] | None = None,
) -> None:
    """Serve ``index_dir`` until SIGINT/SIGTERM; shutting down snapshots pending writes.

    ``overrides`` are settings given as flags (``{"model": ..., "codec": ...}``);
    they win over ``BINSEARCH_*`` variables. The app is built by uvicorn from the
    string reference, so each worker builds its own from the environment.
    """
    import uvicorn

    if os.path.exists(index_dir) and not os.path.isdir(index_dir):
        raise ValueError(f"{index_dir} is a file, not an index directory")
    os.environ["BINSEARCH_INDEX_DIR"] = str(index_dir)
    for name, value in (overrides or {}).items():
        os.environ[f"BINSEARCH_{name.upper()}"] = str(value)
    configure_logging()
    settings = Settings()
    host = choose_host(host, settings)
    log.info(json.dumps({"event": "listening", "host": host, "port": port}))
    uvicorn.run(
        "server.app:create_app",
        factory=True,
        host=host,
        port=port,
        access_log=False,  # the app logs one structured line per request instead
        timeout_graceful_shutdown=30,
    )
