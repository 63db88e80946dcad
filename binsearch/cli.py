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
        "--skip-empty",
        action="store_true",
        help="leave out documents with neither title nor text instead of stopping",
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

    cli_quality.add_parsers(sub)
    cli_compress.add_parsers(sub)
    return parser


def cmd_index(args: argparse.Namespace) -> None:
    from binsearch.corpus import read_corpus
    from binsearch.encoder import Encoder
    from binsearch.pipeline import build_index

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
    encoder = Encoder(args.model)  # resolves the model first: a bad path fails before any reading
    docs = read_corpus(args.corpus, empty="skip" if args.skip_empty else "error")
    print(f"read {len(docs):,} documents from {args.corpus}", file=sys.stderr)
    started = time.perf_counter()
    embeddings = codec = None
    if args.codec == "rbe":
        from binsearch.codecs import make_codec

        embeddings = encoder.encode([d.content for d in docs], args.batch_size, True)
        if binarizer is not None:
            codec = make_codec("rbe", embeddings.shape[1], args.bits, model=binarizer)
        else:
            codec = make_codec("rbe", embeddings.shape[1], args.bits, train_on=embeddings)
    index = build_index(
        docs,
        args.out,
        encoder,
        args.codec,
        args.bits,
        args.batch_size,
        embeddings=embeddings,
        codec=codec,
    )
    print(
        f"indexed {len(index):,} documents into {args.out} with {encoder.name}, "
        f"codec {args.codec} x{index.planes} ({index.bits_per_vector} bits per vector) "
        f"in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )


def cmd_search(args: argparse.Namespace) -> None:
    from binsearch.pipeline import Searcher

    if not args.query.strip():
        raise UsageError("the query is empty")
    searcher = Searcher.open(args.index, args.model)
    started = time.perf_counter()
    hits = searcher.search([args.query], args.k)[0]
    elapsed_ms = (time.perf_counter() - started) * 1e3
    if args.json:
        print(
            json.dumps(
                {
                    "query": args.query,
                    "took_ms": round(elapsed_ms, 2),
                    "results": [h.to_dict() for h in hits],
                },
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
    serve(args.dir, args.host, args.port, overrides)


COMMANDS = {
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
    from binsearch.encoder import ModelError
    from index import IndexFormatError

    known = (UsageError, CorpusError, ModelError, IndexFormatError, ValueError, OSError)
    if isinstance(exc, known):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (set BINSEARCH_DEBUG=1 for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
