"""``binsearch eval``: recall against bits on any corpus, and which code to build."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from binsearch.cli.common import (
    UsageError,
    _int_list,
    _positive_int,
    add_precision_argument,
    apply_precision,
)
from binsearch.codes.codecs import CODECS, LEARNED_CODECS
from binsearch.encoder.model import DEFAULT_MODEL
from binsearch.eval.runner import PEERS

DEFAULT_CODECS = ("grid", "sign", "rabitq")  # the learned codec, the baseline, the faiss peer


def _codec_list(text: str) -> list[str]:
    """Comma-separated codec names: ours plus the faiss peer."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    known = CODECS + LEARNED_CODECS + PEERS
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown codec(s) {unknown or text!r}; choose from {', '.join(known)}"
        )
    return names


def _target(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"the recall target is in (0, 1], got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` on ``sub``."""
    p = sub.add_parser(
        "eval",
        help="recall vs bits per vector on your corpus, and the smallest code reaching a target",
        description=(
            "Measure every codec and bit count on your own corpus: recall of the float model's "
            "own top-10 and top-100, bits per vector (every stored bit) and search time per query "
            "at the corpus's size; then recommend the fewest bits reaching --target, with the "
            "`binsearch index` line that builds it. No judgments needed: without --queries, "
            "documents are held out of the corpus as queries. A BEIR folder with queries.jsonl and "
            "qrels/test.tsv is scored on its judged queries, adding nDCG@k and Recall@100."
        ),
        epilog=(
            "examples:\n"
            "  binsearch eval docs.jsonl --out report/\n"
            "  binsearch eval --embeddings corpus.npy --target 0.9\n"
            "  binsearch eval docs.csv --queries questions.txt --codec grid,residual --bits 1,2,3,4"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "corpus",
        nargs="?",
        default=None,
        help="BEIR folder (corpus.jsonl), .jsonl, .csv/.tsv with a 'text' column, or .txt "
        "(one document per line); optional with --embeddings",
    )
    p.add_argument(
        "--embeddings",
        default=None,
        metavar="PATH",
        help="precomputed document embeddings: a .npy (n, d), or a folder with corpus.npy "
        "(+ ids.json, queries.npy); skips the encoder",
    )
    p.add_argument(
        "--queries",
        default=None,
        metavar="FILE",
        help="queries without judgments: .jsonl ({_id, text}), .csv/.tsv ('text' column), "
        ".txt (one per line), or .npy embeddings; searched against the whole corpus",
    )
    p.add_argument(
        "--qrels",
        default=None,
        metavar="FILE",
        help="with --queries: relevance judgments (query-id<TAB>corpus-id<TAB>score) for nDCG",
    )
    p.add_argument(
        "--holdout",
        type=_positive_int,
        default=None,
        metavar="N",
        help="documents held out as queries (default 1,000, or 10%% of a corpus under 10,000); "
        "also turns a judged BEIR folder into a held-out evaluation",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out sample (default 0)")
    p.add_argument(
        "--target",
        type=_target,
        default=0.95,
        help="recall of the float top-k the recommended code must reach (default 0.95)",
    )
    p.add_argument(
        "--rescore",
        action="store_true",
        help="also measure each of our codes searched with rescoring (4x candidates re-ranked "
        "by the float query against the stored codes, no extra storage); the recommendation "
        "may then need it",
    )
    p.add_argument(
        "--codec",
        type=_codec_list,
        default=list(DEFAULT_CODECS),
        help="comma-separated codecs (default: grid,sign,rabitq). grid: learned rotation + "
        "optimal per-vector grid, fitted on the corpus; residual: training-free planes; "
        "rbe: the recurrent binarizer; sign: 1 bit, Hamming; rabitq: faiss IndexRaBitQ "
        "(measured beside ours, never recommended)",
    )
    p.add_argument(
        "--bits", type=_int_list, default=[1, 2, 4], help="bits per dimension (default: 1,2,4)"
    )
    p.add_argument(
        "--k", type=_positive_int, default=10, help="cut-off of recall and nDCG (default 10)"
    )
    _add_encoder_arguments(p)
    p.add_argument(
        "--mode",
        choices=("semantic", "hybrid", "compat"),
        default="semantic",
        help="semantic: codecs vs bits (default); hybrid (a BEIR folder with judgments): "
        "keyword (BM25), semantic and hybrid ranking side by side, with the first --codec at "
        "the first --bits; compat (a BEIR folder, --embeddings of the old model and "
        "--new-embeddings of the new one): varwidth codes at each --bits, the four "
        "combinations of old/new queries on old/new codes, new-on-old by a learned query map",
    )
    p.add_argument(
        "--new-embeddings",
        default=None,
        metavar="DIR",
        help="with --mode compat: the new model's corpus.npy, queries.npy and ids.json",
    )
    p.add_argument(
        "--out", default=None, help="report folder: results.json, report.md, quality.png"
    )


def _add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """How a corpus without --embeddings is encoded."""
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model to encode with (default: {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=64, help="encoder batch size (default 64)"
    )
    add_precision_argument(p)
    p.add_argument(
        "--save-embeddings",
        default=None,
        metavar="DIR",
        help="keep the encoded corpus in DIR (corpus.npy + ids.json) for --embeddings and "
        "`binsearch index --embeddings`",
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from binsearch.eval.inputs import resolve
    from binsearch.eval.recommend import describe, recommend
    from binsearch.eval.report import format_table, write_report
    from binsearch.eval.runner import evaluate

    if args.save_embeddings and args.embeddings:
        raise UsageError("--save-embeddings goes with encoding, not with --embeddings")
    if args.qrels and not args.queries:
        raise UsageError("--qrels goes with --queries (a BEIR folder brings its own)")
    apply_precision(args)
    if args.mode == "hybrid":
        _eval_modes(args)
        return
    if args.mode == "compat":
        _eval_compat(args)
        return
    if args.new_embeddings:
        raise UsageError("--new-embeddings goes with --mode compat")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="binsearch-eval-") as tmp:
        workdir = Path(args.save_embeddings) if args.save_embeddings else Path(tmp)
        inputs = resolve(
            args.corpus,
            args.embeddings,
            args.queries,
            args.qrels,
            args.holdout,
            args.seed,
            args.model,
            args.batch_size,
            workdir,
        )
        work = inputs.work
        print(
            f"{work.searched:,} documents searched, {len(work.query_ids):,} queries "
            f"({work.kind}), {work.source.dim}-d",
            file=sys.stderr,
        )
        rows, recalls = evaluate(
            work, args.codec, args.bits, args.k, args.seed, rescore=args.rescore
        )
    embeddings = inputs.embeddings or args.save_embeddings
    rec = recommend(
        rows,
        recalls,
        args.target,
        args.k,
        inputs.documents,
        corpus=args.corpus,
        embeddings=embeddings,
        model=None if inputs.model in (None, DEFAULT_MODEL) else inputs.model,
        skip_empty=inputs.skip_empty,
    )
    name = Path(args.corpus or args.embeddings).resolve().name
    print(name)
    for key, value in inputs.setup.items():
        print(f"  {key}: {value}")
    print()
    print(format_table(rows, args.k))
    print()
    print(describe(rec))
    if args.out:
        setup = {**inputs.setup, "seconds": round(time.perf_counter() - started, 1)}
        write_report(rows, rec, args.out, f"{name}: recall vs bits per vector", setup, args.k)
        print(f"wrote {args.out}/results.json, report.md, quality.png")


def _eval_modes(args: argparse.Namespace) -> None:
    """``--mode hybrid``: keyword, semantic and hybrid ranking of one code, side by side."""
    from binsearch.eval.modes import evaluate_modes, format_modes
    from binsearch.eval.quality import encode_dataset, load_embeddings

    if args.corpus is None or not Path(args.corpus).is_dir():
        raise UsageError("--mode hybrid needs a BEIR folder (corpus, queries and judgments)")
    codec = args.codec[0]
    if codec in PEERS:
        raise UsageError(f"--mode hybrid ranks by a binsearch codec, not the peer {codec!r}")
    if args.embeddings:
        data = load_embeddings(args.corpus, args.embeddings)
    else:
        from binsearch.encoder.model import Encoder

        data = encode_dataset(args.corpus, Encoder(args.model), args.batch_size)
    name = Path(args.corpus).resolve().name
    rows = evaluate_modes(args.corpus, data, codec, args.bits[0], args.k)
    print(
        f"{name}: {data.corpus.shape[0]:,} documents, {len(data.query_ids)} judged queries, "
        f"{data.corpus.shape[1]}-d"
    )
    table = format_modes(rows, args.k)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "modes.json").write_text(json.dumps(rows, indent=1) + "\n")
        (out / "modes.md").write_text(f"# {name}: keyword, semantic and hybrid\n\n{table}\n")
        print(f"wrote {args.out}/modes.json, modes.md")


def _eval_compat(args: argparse.Namespace) -> None:
    """``--mode compat``: old/new queries on old/new varwidth codes, the four combinations."""
    from binsearch.eval.compat import evaluate_compat, format_compat

    if args.corpus is None or not Path(args.corpus).is_dir():
        raise UsageError("--mode compat needs a BEIR folder (corpus, queries and judgments)")
    for flag, value in (
        ("--embeddings", args.embeddings),
        ("--new-embeddings", args.new_embeddings),
    ):
        if not value or not Path(value).is_dir():
            raise UsageError(f"--mode compat needs {flag} DIR (corpus.npy, queries.npy, ids.json)")
    name = Path(args.corpus).resolve().name
    print(f"{name}: fitting varwidth codes and compatible query maps ...", file=sys.stderr)
    rows = evaluate_compat(
        args.corpus, args.embeddings, args.new_embeddings, args.bits, args.k, seed=args.seed
    )
    table = format_compat(rows, args.k)
    print(f"{name}: old model {args.embeddings}, new model {args.new_embeddings}")
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compat.json").write_text(json.dumps(rows, indent=1) + "\n")
        (out / "compat.md").write_text(
            f"# {name}: compatible queries, four combinations\n\n{table}\n"
        )
        print(f"wrote {args.out}/compat.json, compat.md")
