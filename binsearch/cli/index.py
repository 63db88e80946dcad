"""The ``index`` command: a corpus into a collection directory (or a sharded one)."""

from __future__ import annotations

import argparse
import sys
import time

from binsearch.cli.common import (
    UsageError,
    _positive_int,
    add_precision_argument,
    apply_precision,
)
from binsearch.codes.codecs import CODECS, LEARNED_CODECS
from binsearch.encoder.model import DEFAULT_MODEL


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="encode and binarize a corpus into a collection directory",
        description=(
            "Encode every document (title + text) with a sentence-transformers model, binarize the "
            "embeddings with a codec, and write a collection directory (codes, documents in SQLite, manifest)."
        ),
    )
    p.add_argument(
        "corpus",
        help="BEIR folder (corpus.jsonl), .jsonl, .csv/.tsv with a 'text' column, or .txt (one document per line)",
    )
    p.add_argument(
        "--out", required=True, help="collection directory to write (created if missing)"
    )
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
    add_precision_argument(p)
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


def cmd_index(args: argparse.Namespace) -> None:
    from binsearch.collection.ingest import index_corpus

    if args.codec == "sign" and args.bits != 1:
        raise UsageError(
            "the sign codec has 1 bit per dimension; use --codec residual for more bits"
        )
    if args.binarizer and args.codec != "rbe":
        raise UsageError("--binarizer goes with --codec rbe")
    binarizer = None
    if args.binarizer:  # checked before any encoding: a wrong model fails fast
        from binsearch.codes.binarizer import RecurrentBinarizer

        binarizer = RecurrentBinarizer.load(args.binarizer)
        if binarizer.planes != args.bits:
            raise UsageError(
                f"{args.binarizer} writes {binarizer.planes} planes; pass --bits {binarizer.planes}"
            )
    if args.ray is not None and args.shards is None:
        raise UsageError("--ray goes with --shards (a sharded collection is built on Ray)")
    apply_precision(args)
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
        encoder = getattr(collection, "_encoder", None)
        ran = getattr(encoder, "precision_used", None)  # None: nothing was encoded
        print(
            f"indexed {len(collection):,} documents into {args.out} with {collection.model_name}"
            f"{f' ({ran})' if ran else ''}, codec {args.codec} x{collection.codec.planes} "
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


COMMANDS = {"index": cmd_index}
