"""The ``binsearch`` command line: index, search, eval, demo.

Every failure a user can cause ends in one ``error: ...`` line and exit code 2,
never a traceback (set ``BINSEARCH_DEBUG=1`` to see one anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from binsearch import cli_compress, cli_quality
from binsearch.cli_common import UsageError, _positive_int, print_hits
from binsearch.codecs import CODECS, LEARNED_CODECS
from binsearch.encoder import DEFAULT_MODEL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binsearch",
        description=(
            "Binary-embedding semantic search: index a corpus as multi-bit binary codes, "
            "search it, and measure retrieval quality against bits per vector."
        ),
        epilog="Run `binsearch demo` for a tour on the bundled Cranfield collection.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "index",
        help="encode and binarize a corpus into an index directory",
        description=(
            "Encode every document (title + text) with a sentence-transformers model, binarize the "
            "embeddings with a codec, and write a self-describing index directory with a document store."
        ),
    )
    p.add_argument(
        "corpus",
        help="BEIR folder (corpus.jsonl), .jsonl, .csv/.tsv with a 'text' column, or .txt (one document per line)",
    )
    p.add_argument("--out", required=True, help="index directory to write (created if missing)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name or directory (default: {DEFAULT_MODEL}, bundled)",
    )
    p.add_argument(
        "--codec",
        choices=CODECS + LEARNED_CODECS,
        default="residual",
        help="sign: 1 bit/dim, Hamming; residual: BITS planes with per-document scales (default); "
        "grid: learned rotation + the optimal per-vector grid of BITS planes (fitted on the corpus; "
        "beats faiss RaBitQ at equal or fewer bits); "
        "rbe: the learned recurrent binarizer, BITS planes (trained on the corpus unless --binarizer)",
    )
    p.add_argument(
        "--binarizer",
        default=None,
        help="with --codec rbe: a model from `binsearch train-binarizer` instead of training one",
    )
    p.add_argument(
        "--bits",
        type=_positive_int,
        default=2,
        help="planes (bits per dimension); residual and rbe (default 2)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=64, help="encoder batch size (default 64)"
    )
    p.add_argument(
        "--embeddings",
        default=None,
        metavar="DIR",
        help="precomputed corpus.npy + ids.json (as `eval --embeddings` reads): skip the "
        "encoder; rows are matched to documents by id",
    )
    p.add_argument(
        "--skip-empty",
        action="store_true",
        help="leave out documents with neither title nor text instead of stopping",
    )
    p.add_argument(
        "--shards",
        type=_positive_int,
        default=None,
        metavar="N",
        help="write a sharded collection of N shards, built in parallel by Ray actors "
        "(the [distributed] extra); serve it with `binsearch serve DIR --ray`",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="with --shards: build on this Ray cluster ('auto', HOST:PORT) instead of a local Ray",
    )

    p = sub.add_parser(
        "search",
        help="search an index directory with a text query",
        description="Encode the query with the index's own model and print the best documents.",
    )
    p.add_argument("index", help="index directory written by `binsearch index`")
    p.add_argument("query", help="query text")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (default 10)")
    p.add_argument(
        "--model",
        default=None,
        help="model directory, if the index was built from a path that moved",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")

    p = sub.add_parser(
        "serve",
        help="serve an index directory over HTTP (search, documents, page at /)",
        description=(
            "Start the search service on DIR (created empty if missing). Settings also come from "
            "BINSEARCH_* variables; set BINSEARCH_API_KEY to require a key for writes."
        ),
    )
    p.add_argument("dir", help="index directory (from `binsearch index`, or new)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--model", default=None, help="model for a new index or a moved one")
    p.add_argument("--codec", choices=CODECS, default=None, help="codec of a new index")
    p.add_argument("--bits", type=_positive_int, default=None, help="planes of a new index")
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

    p = sub.add_parser(
        "upgrade",
        help="convert an index directory of an older binsearch into a collection",
        description=(
            "Read the generation in force of an old index directory (manifest.json, "
            "documents.jsonl, generations/, wal/), replay its write logs, and write a "
            "collection in its place; the old directory is kept as DIR.pre-upgrade."
        ),
    )
    p.add_argument("dir", help="the old index directory")
    cli_quality.add_parsers(sub)
    cli_compress.add_parsers(sub)
    return parser


def cmd_index(args: argparse.Namespace) -> None:
    from binsearch.ingest import index_corpus

    if args.codec == "sign" and args.bits != 1:
        raise UsageError(
            "the sign codec has 1 bit per dimension; use --codec residual for more bits"
        )
    if args.binarizer and args.codec != "rbe":
        raise UsageError("--binarizer goes with --codec rbe")
    binarizer = None
    if args.binarizer:  # checked before any encoding: a wrong model fails fast
        from binsearch.binarizer import RecurrentBinarizer

        binarizer = RecurrentBinarizer.load(args.binarizer)
        if binarizer.planes != args.bits:
            raise UsageError(
                f"{args.binarizer} writes {binarizer.planes} planes; pass --bits {binarizer.planes}"
            )
    if args.ray is not None and args.shards is None:
        raise UsageError("--ray goes with --shards (a sharded collection is built on Ray)")
    started = time.perf_counter()
    options = {
        "model": args.model,
        "codec": args.codec,
        "bits": args.bits,
        "binarizer": binarizer,
        "embeddings": args.embeddings,
        "batch_size": args.batch_size,
        "skip_empty": args.skip_empty,
    }
    if args.shards is not None:
        _index_sharded(args, options, started)
        return
    collection = index_corpus(args.corpus, args.out, **options)
    with collection:
        print(
            f"indexed {len(collection):,} documents into {args.out} with {collection.model_name}, "
            f"codec {args.codec} x{collection.codec.planes} "
            f"({collection.index.bits_per_vector} bits per vector) "
            f"in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )


def _index_sharded(args: argparse.Namespace, options: dict, started: float) -> None:
    from binsearch.distributed.build import index_corpus_sharded

    sharded = index_corpus_sharded(
        args.corpus,
        args.out,
        args.shards,
        **options,
        address=args.ray,
    )
    with sharded:
        stats = sharded.stats()
        print(
            f"indexed {stats['documents']:,} documents into {args.out} in {args.shards} shards "
            f"with {sharded.model_name}, codec {args.codec} ({stats['bits_per_vector']} bits "
            f"per vector) in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )


def cmd_search(args: argparse.Namespace) -> None:
    from binsearch.collection import Collection

    if not args.query.strip():
        raise UsageError("the query is empty")
    # Read-only: works beside a server that holds the directory for writing.
    with Collection.open(args.index, model=args.model, readonly=True) as collection:
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


def cmd_serve(args: argparse.Namespace) -> None:
    # Imported here: the CLI starts the server by uvicorn's string reference.
    from server.run import serve

    flags = {"model": args.model, "codec": args.codec, "bits": args.bits}
    overrides = {name: value for name, value in flags.items() if value is not None}
    if args.allow_remote:
        overrides["allow_remote"] = "true"
    if args.ray is not None:
        from server.settings import Settings

        if "ray" not in Settings.model_fields:  # the service's side is not wired in yet
            raise UsageError("this binsearch's service cannot serve sharded collections yet")
        overrides["ray"] = "true"
        overrides["ray_address"] = "" if args.ray == "local" else args.ray
    serve(args.dir, args.host, args.port, overrides)


def cmd_upgrade(args: argparse.Namespace) -> None:
    from binsearch.upgrade import upgrade

    kept = upgrade(args.dir)
    print(
        f"converted {args.dir} into a collection; the old directory is kept at {kept}",
        file=sys.stderr,
    )


COMMANDS = {
    "upgrade": cmd_upgrade,
    "index": cmd_index,
    "search": cmd_search,
    "serve": cmd_serve,
    **cli_quality.COMMANDS,
    **cli_compress.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place errors become messages
        if os.environ.get("BINSEARCH_DEBUG"):
            raise
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return 2
    return 0


def _describe(exc: Exception) -> str:
    from binsearch.corpus import CorpusError
    from binsearch.distributed.errors import ShardUnavailable
    from binsearch.encoder import ModelError
    from index import IndexFormatError

    known = (UsageError, CorpusError, ModelError, IndexFormatError, ValueError, OSError)
    known += (ShardUnavailable,)
    if isinstance(exc, known):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (set BINSEARCH_DEBUG=1 for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
