"""Run ``server.run.serve`` as a real process with the word-hash encoder and a route that fails.

For tests that need a real uvicorn process and its real log configuration:
``python serve_with_fakes.py INDEX_DIR PORT``. ``GET /boom`` shows a progress
bar, warns, and raises an unexpected error (a multi-line one), as library code
and a bug in a route would.
"""

from __future__ import annotations

import sys
import warnings

from fastapi import FastAPI
from server_fakes import WordHashEncoder

import server.app


def _create_app_with_fakes(**kwargs: object) -> FastAPI:
    app = _real_create_app(encoder=WordHashEncoder(), **kwargs)

    def boom() -> None:
        # What libraries do on stderr: a progress bar and a warning, then the bug.
        from tqdm import tqdm

        for _ in tqdm(range(3), desc="a library's progress bar"):
            pass
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        raise RuntimeError("a bug in a route\nwith a message on two lines")

    app.add_api_route("/boom", boom, methods=["GET"], include_in_schema=False)
    return app


_real_create_app = server.app.create_app


def main() -> None:
    collection_dir, port = sys.argv[1], int(sys.argv[2])
    # uvicorn builds the app from the string "server.app:create_app": patch the attribute it reads.
    server.app.create_app = _create_app_with_fakes
    from server.run import serve

    serve(collection_dir, "127.0.0.1", port, {"fsync": "false", "snapshot_on_shutdown": "false"})


if __name__ == "__main__":
    main()
