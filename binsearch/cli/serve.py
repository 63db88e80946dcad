"""The ``serve`` command: the HTTP service over a collection directory (the composition root of :mod:`server`)."""

from __future__ import annotations

import argparse

from binsearch.cli.common import _positive_int, add_precision_argument, apply_precision
from binsearch.codes.codecs import CODECS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a collection directory over HTTP (search, documents, page at /)",
        description=(
            "Start the search service on DIR (created empty if missing). Settings also come from "
            "BINSEARCH_* variables; set BINSEARCH_API_KEY to require a key for writes."
        ),
    )
    p.add_argument("dir", help="collection directory (from `binsearch index`, or new)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--model", default=None, help="model for a new collection or a moved one")
    p.add_argument("--codec", choices=CODECS, default=None, help="codec of a new collection")
    p.add_argument("--bits", type=_positive_int, default=None, help="planes of a new collection")
    add_precision_argument(p)
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="bind a non-loopback --host even without BINSEARCH_API_KEY",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="serve a sharded collection (from `index --shards`) on Ray: a local Ray, or join "
        "the cluster at ADDRESS ('auto' for the one `ray start` runs here, or HOST:PORT)",
    )


def cmd_serve(args: argparse.Namespace) -> None:
    # Imported here: the CLI starts the server by uvicorn's string reference.
    from server.run import serve

    apply_precision(args)
    flags = {"model": args.model, "codec": args.codec, "bits": args.bits}
    overrides = {name: value for name, value in flags.items() if value is not None}
    if args.allow_remote:
        overrides["allow_remote"] = "true"
    if args.ray is not None:
        overrides["ray"] = "true"
        overrides["ray_address"] = "" if args.ray == "local" else args.ray
    serve(args.dir, args.host, args.port, overrides)


COMMANDS = {"serve": cmd_serve}
