"""The ``search`` command: one text query against a collection directory, read-only."""

from __future__ import annotations

import argparse
import json
import time

from binsearch.cli.common import (
    UsageError,
    _positive_int,
    add_precision_argument,
    apply_precision,
    print_hits,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search a collection directory with a text query",
        description="Encode the query with the collection's own model and print the best documents.",
    )
    p.add_argument("dir", help="collection directory written by `binsearch index`")
    p.add_argument("query", help="query text")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (default 10)")
    p.add_argument(
        "--model",
        default=None,
        help="model directory, if the collection was built from a path that moved",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    add_precision_argument(p)


def cmd_search(args: argparse.Namespace) -> None:
    from binsearch.collection.collection import Collection

    if not args.query.strip():
        raise UsageError("the query is empty")
    apply_precision(args)
    # Read-only: works beside a server that holds the directory for writing.
    with Collection.open(args.dir, model=args.model, readonly=True) as collection:
        started = time.perf_counter()
        result = collection.search([args.query], args.k)[0]
        elapsed_ms = (time.perf_counter() - started) * 1e3
    hits = [
        {
            "id": doc["id"],
            "score": round(float(score), 6),
            "title": doc["title"],
            "text": doc["text"],
        }
        for doc, score in zip(result.documents(), result.scores, strict=True)
    ]
    if args.json:
        print(
            json.dumps(
                {"query": args.query, "took_ms": round(elapsed_ms, 2), "results": hits},
                ensure_ascii=False,
            )
        )
        return
    print_hits(hits)
    print(f"({len(hits)} results in {elapsed_ms:.1f} ms)")


COMMANDS = {"search": cmd_search}
