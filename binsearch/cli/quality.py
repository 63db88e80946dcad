"""The quality subcommands: ``train-binarizer`` and ``demo`` (``eval`` is in :mod:`binsearch.cli.eval_cmd`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from binsearch.cli import eval_cmd
from binsearch.cli.common import (
    DEMO_QUERIES,
    SAMPLE_CORPUS,
    UsageError,
    _positive_int,
    print_hits,
)
from binsearch.encoder.model import DEFAULT_MODEL

EVAL_CODECS = ("sign", "residual", "grid", "rabitq")  # eval's default: flagship and peer
DEMO_BITS = [1, 2, 4]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands on ``sub`` (their handler in ``func``)."""
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
        "--old",
        default=None,
        help="frozen older model to stay compatible with (its codes): an rbe model directory, "
        "or a varwidth collection directory / codec JSON, whose codes then get a learned query "
        "map for the new model's embeddings (written as a codec JSON to OUT/codec.json)",
    )
    p.add_argument(
        "--old-embeddings",
        default=None,
        help="with --old: the same rows embedded by the old model's encoder",
    )

    eval_cmd.add_parser(sub)

    p = sub.add_parser(
        "demo",
        help="index the bundled corpus, print quality vs bits, answer two queries",
        description=(
            "The main job on the built-in default: Cranfield (1,400 aeronautics abstracts) and "
            "all-MiniLM-L6-v2. Prints the learned grid codec beside sign, residual and faiss "
            "RaBitQ at 1, 2 and 4 bits per dimension and plots quality against bits per vector."
        ),
    )
    p.add_argument(
        "--out", default="demo-index", help="where to write the demo index (default: ./demo-index)"
    )
    p.add_argument(
        "--plot",
        default="demo-quality.png",
        help="where to write the quality-vs-bits plot (default: ./demo-quality.png)",
    )


def cmd_train_binarizer(args: argparse.Namespace) -> None:
    from binsearch.codes.binarizer import RecurrentBinarizer, load_embedding_file
    from binsearch.codes.train_binarizer import TrainConfig, train_binarizer

    if bool(args.old) != bool(args.old_embeddings):
        raise UsageError("--old and --old-embeddings go together")
    old_codec = _varwidth_codec(args.old) if args.old else None
    if old_codec is not None:
        _train_compatible_varwidth(args, old_codec)
        return
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


def _varwidth_codec(path: str) -> dict | None:
    """The varwidth codec config of a collection directory or a codec JSON, else None (rbe)."""
    import json

    p = Path(path)
    file = p / "collection.json" if p.is_dir() else p
    if p.is_dir() and not file.is_file():
        return None  # an rbe model directory
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a collection or codec JSON ({exc})") from None
    if isinstance(config, dict) and isinstance(config.get("codec"), dict):
        config = config["codec"]  # a collection manifest
    if not isinstance(config, dict) or config.get("codec") != "varwidth":
        found = config.get("codec") if isinstance(config, dict) else None
        raise UsageError(f"{path}: compatible queries need a varwidth codec, found {found!r}")
    return config


def _train_compatible_varwidth(args: argparse.Namespace, config: dict) -> None:
    """New-model queries on an old model's varwidth codes: the learned query map, as a codec."""
    import json

    from binsearch.codes.binarizer import load_embedding_file
    from binsearch.codes.codecs import codec_from_config
    from binsearch.codes.varwidth_compat import CompatibleQueries, compatible_query_map

    old = codec_from_config(config)
    new_x, old_x = load_embedding_file(args.embeddings), load_embedding_file(args.old_embeddings)
    if new_x.shape[0] != old_x.shape[0]:
        raise UsageError(f"the two models embedded {new_x.shape[0]} and {old_x.shape[0]} rows")
    if old_x.shape[1] != old.dim:
        raise UsageError(f"--old-embeddings are {old_x.shape[1]}-d, the old codes {old.dim}-d")
    started = time.perf_counter()
    qmap = compatible_query_map(new_x, old_x, old, steps=args.steps, seed=args.seed, progress=True)
    codec = CompatibleQueries(old, qmap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "codec.json").write_text(json.dumps(codec.config()) + "\n")
    print(
        f"learned a query map {new_x.shape[1]}-d -> the old {old.m}-bit varwidth codes on "
        f"{new_x.shape[0]:,} rows in {time.perf_counter() - started:.1f}s; wrote {out}/codec.json",
        file=sys.stderr,
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from binsearch.collection.collection import Collection
    from binsearch.collection.corpus import read_corpus, read_qrels, read_queries
    from binsearch.encoder.model import Encoder
    from binsearch.eval.quality import EvalData, evaluate_codecs, format_table, plot_quality

    docs = read_corpus(SAMPLE_CORPUS, empty="keep")  # 2 empty abstracts; rows match the qrels
    print(f"binsearch demo: Cranfield, {len(docs):,} aeronautics abstracts, model {DEFAULT_MODEL}")
    encoder = Encoder(DEFAULT_MODEL)
    print("encoding documents ...")
    corpus = encoder.encode([d.content for d in docs], batch_size=64, progress=True)
    if encoder.precision_used:  # auto chose it by measurement on this machine
        print(f"encoder precision: {encoder.precision_used}")
    out = Path(args.out)
    if (out / "collection.json").is_file():  # the previous demo's collection
        import shutil

        shutil.rmtree(out)
    from binsearch.codes.codecs import make_codec

    # The flagship: the learned grid codec, fitted on the corpus's own embeddings.
    codec = make_codec("grid", corpus.shape[1], 2, train_on=corpus)
    with Collection.create(out, codec, 2, DEFAULT_MODEL, encoder=encoder) as collection:
        documents = [{"title": d.title, "text": d.text} for d in docs]
        collection.add([d.id for d in docs], corpus, documents=documents)
    print(f"wrote the collection (learned grid codec, 2 bits per dimension) to {args.out}")

    queries, qrels = read_queries(SAMPLE_CORPUS), read_qrels(SAMPLE_CORPUS)
    judged = [q for q in queries if q in qrels]
    print(f"encoding {len(judged)} judged queries ...")
    q_emb = encoder.encode([queries[q] for q in judged], batch_size=64, progress=True)
    data = EvalData(corpus, q_emb, [d.id for d in docs], judged, qrels)
    print("fitting the grid codec and scoring every codec (sign, residual, grid, RaBitQ) ...")
    rows = evaluate_codecs(data, list(EVAL_CODECS), DEMO_BITS, 10)
    print("\nretrieval quality vs bits per vector (judged queries, no rescoring):\n")
    print(format_table(rows, 10))
    plot_quality(rows, args.plot, "Cranfield (all-MiniLM-L6-v2): quality vs bits per vector", 10)
    print(f"\nwrote the quality-vs-bits plot: {Path(args.plot).resolve()}")

    with Collection.open(out, encoder=encoder) as collection:
        for query in DEMO_QUERIES:
            print(f"\nquery: {query}")
            result = collection.search([query], 5)[0]
            print_hits(
                [
                    {**doc, "score": float(s)}
                    for doc, s in zip(result.documents(), result.scores, strict=True)
                ]
            )
    print(f'\nnext: binsearch search {args.out} "your question" -k 10')


COMMANDS = {
    "train-binarizer": cmd_train_binarizer,
    "eval": eval_cmd.cmd_eval,
    "demo": cmd_demo,
}
