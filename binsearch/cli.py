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
from pathlib import Path

from binsearch.codecs import CODECS, LEARNED_CODECS
from binsearch.encoder import DEFAULT_MODEL

SAMPLE_CORPUS = Path(__file__).resolve().parent / "data" / "cranfield"
DEMO_QUERIES = (
    "boundary layer transition on a flat plate at supersonic speed",
    "heat transfer to a blunt body in hypersonic flow",
)


class UsageError(ValueError):
    """A bad argument value, reported like any other user error."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or min(values) < 1 or max(values) > 8:
        raise argparse.ArgumentTypeError(f"bits must be between 1 and 8, got {text!r}")
    return values


def _codec_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in CODECS + LEARNED_CODECS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown codec(s) {unknown or text!r}; choose from {', '.join(CODECS + LEARNED_CODECS)}"
        )
    return names


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
        "train-binarizer",
        help="train a recurrent binarizer (rbe codec) on float embeddings",
        description=(
            "Fit the learned binarizer on float embeddings alone (no labels) and save it, "
            "for `binsearch index --codec rbe --binarizer MODEL`. With --old, train a model "
            "whose queries score an older model's codes (compatible training)."
        ),
    )
    p.add_argument("embeddings", help=".npy float32 (n, d), or a folder holding corpus.npy")
    p.add_argument("--bits", type=_positive_int, default=2, help="planes per code (default 2)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--width", type=_positive_int, default=None, help="bits per plane (default: d)")
    p.add_argument("--steps", type=_positive_int, default=200, help="training steps (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--old", default=None, help="frozen older model to stay compatible with (its codes)"
    )
    p.add_argument(
        "--old-embeddings",
        default=None,
        help="with --old: the same rows embedded by the old model's encoder",
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
        "eval",
        help="retrieval quality vs bits per vector on a BEIR dataset",
        description=(
            "For exact float search and each codec and bit count: bits per vector (every stored bit), "
            "recall of the float model's own top-k, nDCG@k with a bootstrap 95%% interval, and Recall@100 "
            "over the judged test queries."
        ),
    )
    p.add_argument(
        "dataset", help="BEIR folder with corpus.jsonl, queries.jsonl and qrels/test.tsv"
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model to encode with (default: {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--embeddings",
        default=None,
        help="folder with precomputed corpus.npy, queries.npy and ids.json (skips the encoder)",
    )
    p.add_argument(
        "--codec",
        type=_codec_list,
        default=list(CODECS),
        help="comma-separated codecs (default: sign,residual)",
    )
    p.add_argument(
        "--bits",
        type=_int_list,
        default=[1, 2, 3, 4],
        help="comma-separated bits per dimension (default: 1,2,3,4)",
    )
    p.add_argument(
        "--k", type=_positive_int, default=10, help="cut-off for nDCG and float recall (default 10)"
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=64, help="encoder batch size (default 64)"
    )
    p.add_argument(
        "--out", default=None, help="report folder: results.json, report.md, quality.png"
    )

    p = sub.add_parser(
        "demo",
        help="index the bundled corpus, print quality vs bits, answer two queries",
        description="The main job on the built-in default: Cranfield (1,400 aeronautics abstracts) and all-MiniLM-L6-v2.",
    )
    p.add_argument(
        "--out", default="demo-index", help="where to write the demo index (default: ./demo-index)"
    )

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

    p = sub.add_parser(
        "compress-encoder",
        help="compress the encoder's weights to K bits (residual binary planes)",
        description=(
            "Replace every Linear weight (and, with --embedding-bits, the word-embedding table) by "
            "K residual sign planes with per-row scales, fitted by least squares and alternating "
            "refinement; optionally calibrate by distillation on real text. The output directory "
            "works as --model for index, search and serve."
        ),
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name or directory to compress (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--bits", type=int, required=True, help="bits per Linear weight, 1-8")
    p.add_argument(
        "--embedding-bits",
        type=int,
        default=None,
        help="also compress the word-embedding table to this many bits (default: keep it float)",
    )
    p.add_argument(
        "--group-size",
        type=_positive_int,
        default=None,
        help="columns sharing one scale (default: one scale per output row)",
    )
    p.add_argument(
        "--calibrate",
        default=None,
        metavar="CORPUS",
        help="distil on this corpus (any `index` format; 'cranfield' = the bundled one)",
    )
    p.add_argument(
        "--calibrate-size",
        type=_positive_int,
        default=2000,
        help="calibration texts sampled from CORPUS (default 2000)",
    )
    p.add_argument("--epochs", type=float, default=1.0, help="calibration passes (default 1)")
    p.add_argument(
        "--mixed",
        action="store_true",
        help="treat --bits as an average: give each Linear weight K-1, K or K+1 bits "
        "by its measured sensitivity",
    )
    p.add_argument("--out", default=None, help="directory to write (default: MODEL-KbitS)")
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


def cmd_train_binarizer(args: argparse.Namespace) -> None:
    from binsearch.binarizer import RecurrentBinarizer, load_embedding_file
    from binsearch.train_binarizer import TrainConfig, train_binarizer

    if bool(args.old) != bool(args.old_embeddings):
        raise UsageError("--old and --old-embeddings go together")
    x = load_embedding_file(args.embeddings)
    old = RecurrentBinarizer.load(args.old) if args.old else None
    old_x = load_embedding_file(args.old_embeddings) if args.old_embeddings else None
    started = time.perf_counter()
    model, losses = train_binarizer(
        x,
        args.bits,
        args.width,
        config=TrainConfig(steps=args.steps, seed=args.seed),
        old=old,
        old_x=old_x,
    )
    model.save(args.out)
    print(
        f"trained a {model.planes} x {model.m}-bit binarizer on {x.shape[0]:,} x {x.shape[1]} "
        f"embeddings in {time.perf_counter() - started:.1f}s (loss {losses[0]:.4f} -> "
        f"{losses[-1]:.4f}); wrote {args.out} (version {model.version})",
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
    _print_hits(hits)
    print(f"({len(hits)} results in {elapsed_ms:.1f} ms)")


def _print_hits(hits) -> None:
    for rank, hit in enumerate(hits, 1):
        title = hit.title or hit.text
        title = title if len(title) <= 90 else title[:87] + "..."
        print(f"{rank:3d}. {hit.score:7.4f}  [{hit.id}] {title}")


def cmd_eval(args: argparse.Namespace) -> None:
    from binsearch.quality import (
        encode_dataset,
        evaluate_codecs,
        format_table,
        load_embeddings,
        write_report,
    )

    if args.embeddings:
        data = load_embeddings(args.dataset, args.embeddings)
    else:
        from binsearch.encoder import Encoder

        data = encode_dataset(args.dataset, Encoder(args.model), args.batch_size)
    rows = evaluate_codecs(data, args.codec, args.bits, args.k)
    name = Path(args.dataset).resolve().name
    print(
        f"{name}: {data.corpus.shape[0]:,} documents, {len(data.query_ids)} judged queries, {data.corpus.shape[1]}-d"
    )
    print(format_table(rows, args.k))
    if args.out:
        write_report(rows, args.out, f"{name}: retrieval quality vs bits per vector", args.k)
        print(f"wrote {args.out}/results.json, report.md, quality.png")


def cmd_demo(args: argparse.Namespace) -> None:
    from binsearch.corpus import read_corpus, read_qrels, read_queries
    from binsearch.encoder import Encoder
    from binsearch.pipeline import Searcher, build_index
    from binsearch.quality import EvalData, evaluate_codecs, format_table

    docs = read_corpus(SAMPLE_CORPUS, empty="keep")  # 2 empty abstracts; rows match the qrels
    print(f"binsearch demo: Cranfield, {len(docs):,} aeronautics abstracts, model {DEFAULT_MODEL}")
    encoder = Encoder(DEFAULT_MODEL)
    print("encoding documents ...")
    corpus = encoder.encode([d.content for d in docs], batch_size=64, progress=True)
    build_index(docs, args.out, encoder, "residual", 2, embeddings=corpus)
    print(f"wrote the index (residual codec, 2 bits per dimension) to {args.out}")

    queries, qrels = read_queries(SAMPLE_CORPUS), read_qrels(SAMPLE_CORPUS)
    judged = [q for q in queries if q in qrels]
    print(f"encoding {len(judged)} judged queries ...")
    q_emb = encoder.encode([queries[q] for q in judged], batch_size=64, progress=True)
    data = EvalData(corpus, q_emb, [d.id for d in docs], judged, qrels)
    rows = evaluate_codecs(data, CODECS, [1, 2, 3, 4], 10)
    print("\nretrieval quality vs bits per vector (judged queries):\n")
    print(format_table(rows, 10))

    searcher = Searcher.open(args.out)
    for query in DEMO_QUERIES:
        print(f"\nquery: {query}")
        _print_hits(searcher.search([query], 5)[0])
    print(f'\nnext: binsearch search {args.out} "your question" -k 10')


def cmd_serve(args: argparse.Namespace) -> None:
    # Imported here: the CLI starts the server by uvicorn's string reference.
    from server.run import serve

    flags = {"model": args.model, "codec": args.codec, "bits": args.bits}
    overrides = {name: value for name, value in flags.items() if value is not None}
    if args.allow_remote:
        overrides["allow_remote"] = "true"
    serve(args.dir, args.host, args.port, overrides)


def cmd_compress_encoder(args: argparse.Namespace) -> None:
    from binsearch.compress import check_bits, compress_encoder, save_compressed

    check_bits(args.bits)
    if args.embedding_bits is not None:
        check_bits(args.embedding_bits)
    if args.epochs <= 0:
        raise UsageError(f"--epochs must be positive, got {args.epochs}")
    texts = _calibration_texts(args.calibrate, args.calibrate_size) if args.calibrate else None
    out = args.out or f"{Path(args.model).name}-{args.bits}bit"
    started = time.perf_counter()
    bits = _mixed_plan(args, texts) if args.mixed else args.bits
    model, compressed = compress_encoder(
        args.model,
        bits,
        embeddings=args.embedding_bits is not None,
        embedding_bits=args.embedding_bits,
        group_size=args.group_size,
    )
    if texts:
        from binsearch.compress_calibrate import calibrate
        from binsearch.encoder import Encoder

        teacher = Encoder(args.model).model
        compressed = calibrate(model, teacher, compressed, texts, epochs=args.epochs)
    config = save_compressed(model, compressed, out)
    bits = config["bits_per_weight"]
    print(
        f"compressed {len(compressed.tensors)} weights ({bits['weights']:,} values) to "
        f"{bits['sign_bits']:.2f} sign bits per weight ({bits['stored_bits']:.3f} with scales)"
        f"{f', calibrated on {len(texts):,} texts' if texts else ''} in "
        f"{time.perf_counter() - started:.0f}s; wrote {out} ({config['size_bytes'] / 1e6:.1f} MB)",
        file=sys.stderr,
    )


def _mixed_plan(args: argparse.Namespace, texts: list[str] | None) -> dict[str, int]:
    """Bits per Linear weight averaging ``--bits``, from sensitivity measured on <= 64 texts."""
    from binsearch.compress import (
        allocate_bits,
        measure_sensitivity,
        quantizable_weights,
        transformer_of,
    )
    from binsearch.encoder import Encoder

    model = Encoder(args.model).model
    auto = transformer_of(model)
    names = quantizable_weights(auto)
    options = tuple(k for k in (args.bits - 1, args.bits, args.bits + 1) if 1 <= k <= 8)
    size = min(64, args.calibrate_size)
    sample = (texts or _calibration_texts("cranfield", size))[:size]
    losses, _ = measure_sensitivity(model, sample, names, options, args.group_size)
    params = dict(auto.named_parameters())
    return allocate_bits(losses, {n: params[n].numel() for n in names}, args.bits)


def _calibration_texts(corpus: str, size: int) -> list[str]:
    """Up to ``size`` texts (documents, plus queries of a BEIR folder), a fixed random sample."""
    import random

    from binsearch.corpus import CorpusError, read_corpus, read_queries

    path = SAMPLE_CORPUS if corpus == "cranfield" else Path(corpus)
    try:
        texts = [d.content for d in read_corpus(path, empty="skip")]
    except CorpusError as exc:
        raise UsageError(f"calibration corpus {corpus}: {exc}") from None
    if path.is_dir() and (path / "queries.jsonl").is_file():
        texts += [q for q in read_queries(path).values() if q.strip()]
    if len(texts) > size:
        texts = random.Random(0).sample(texts, size)
    return texts


COMMANDS = {
    "index": cmd_index,
    "train-binarizer": cmd_train_binarizer,
    "search": cmd_search,
    "eval": cmd_eval,
    "demo": cmd_demo,
    "serve": cmd_serve,
    "compress-encoder": cmd_compress_encoder,
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
