"""The ``compress-encoder`` subcommand."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from binsearch.cli.common import SAMPLE_CORPUS, UsageError, _positive_int
from binsearch.encoder.model import DEFAULT_MODEL

DEFAULT_BITS = 3.0
DEFAULT_MINUTES = 28.0  # the whole run, model loading and writing included: <= 30 min
SOURCES = ("cranfield", "wordnet")
DEFAULT_SOURCES = SOURCES
WORDNET = Path("/usr/share/wordnet")  # where Debian's wordnet-base puts the database
QUANTIZE_SHARE = 0.4  # of --minutes at most for sensitivity probes + GPTQ; the rest distils
DEFAULT_THREADS = 1  # measured at load ~2.5 on 2 cores: GPTQ of a 1536x384 weight 2.5 s with
# one torch thread, 14.5 s with two; a distillation step 1.7 s vs 5.6 s


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands on ``sub`` (their handler in ``func``)."""
    p = sub.add_parser(
        "compress-encoder",
        help="compress the whole encoder to B stored bits per weight (residual binary planes)",
        description=(
            "Compress every weight matrix of the encoder (Linear weights and embedding tables) to "
            "an average of B stored bits per weight, scales included: bits are allocated per "
            "matrix by measured sensitivity, Linear weights are quantized by GPTQ on calibration "
            "activations, then the model is distilled from the float one (every layer's hidden "
            "states and attention maps, the embedding cosine and an in-batch ranking loss) until "
            "--minutes is spent. Calibration text: the bundled "
            "Cranfield abstracts, the WordNet glosses (when installed) and any --calibrate corpus; "
            "its token counts give the word-embedding table's rows their planes. The output directory works as "
            "--model for index, search, serve and eval."
        ),
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name or directory to compress (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--bits",
        type=float,
        default=DEFAULT_BITS,
        help="average stored bits per weight over the whole model, scales counted "
        f"(1.2-8, default {DEFAULT_BITS:g})",
    )
    p.add_argument(
        "--calibrate",
        action="append",
        default=[],
        metavar="CORPUS",
        help="also calibrate on this corpus (any `index` format; repeatable): its tokens "
        "get table planes and its texts are distilled on. Recommended: the corpus you will "
        "index",
    )
    p.add_argument(
        "--sources",
        default=",".join(DEFAULT_SOURCES),
        help="built-in calibration text, comma-separated: cranfield (the bundled abstracts), "
        "wordnet (every WordNet gloss, when the Debian package wordnet-base is installed; "
        f"skipped with a note otherwise), or none (default {','.join(DEFAULT_SOURCES)})",
    )
    p.add_argument(
        "--table",
        choices=("rows", "uniform"),
        default="rows",
        help="word-embedding table: planes per row by token counts on the calibration text "
        "(rows, default: frequent tokens up to 8 planes, the tail 1) or every row alike",
    )
    p.add_argument(
        "--calibrate-size",
        type=_positive_int,
        default=4000,
        help="calibration texts sampled from all corpora together (default 4000)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help="time budget of the whole run: sensitivity probes and GPTQ take at most "
        f"{QUANTIZE_SHARE:.0%}% of it, distillation the rest (default {DEFAULT_MINUTES:g})",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=DEFAULT_THREADS,
        help=f"torch threads (default {DEFAULT_THREADS}: on a shared 2-core machine one thread "
        "was 3-6x faster than two)",
    )
    p.add_argument(
        "--distill",
        choices=("layerwise", "output", "none"),
        default="layerwise",
        help="distillation loss: every layer's hidden states and attention maps plus "
        "embedding cosine and in-batch ranking (layerwise, default), only the last two "
        "(output), or none",
    )
    p.add_argument("--out", default=None, help="directory to write (default: MODEL-Bbit)")


def cmd_compress_encoder(args: argparse.Namespace) -> None:
    import torch

    from binsearch.encoder.compress.compressor import check_bits, compress_encoder, save_compressed

    started = time.monotonic()
    torch.set_num_threads(args.threads)
    try:
        check_bits(args.bits, low=1.2)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.minutes > 0:
        raise UsageError(f"--minutes must be positive, got {args.minutes}")
    budget = 60 * args.minutes
    deadline = started + budget - min(20.0, 0.1 * budget)  # time left to write the directory
    sources = calibration_sources(args.sources, args.calibrate)
    texts = calibration_texts(sources, args.calibrate_size)
    # Cranfield's counts alone starve the rows other text needs (held-out SciFact
    # cosine 0.914 by rows vs 0.923 uniform, post-training): rows need a broader source
    narrow = list(sources) == ["cranfield"]
    if args.table == "rows" and narrow:
        print(
            "note: only Cranfield to count tokens on; the word table stays uniform "
            "(install wordnet-base or pass --calibrate CORPUS for rows)",
            file=sys.stderr,
        )
    out = args.out or f"{Path(args.model).name}-{args.bits:g}bit"
    quantize_by = started + QUANTIZE_SHARE * budget
    model, compressed, report = compress_encoder(
        args.model,
        args.bits,
        texts,
        deadline=quantize_by,
        table_texts=sources if args.table == "rows" and not narrow else None,
    )
    compressed.config["calibration_sources"] = {s: len(t) for s, t in sources.items()}
    if args.distill != "none" and time.monotonic() < deadline - min(30.0, 0.1 * budget):
        from binsearch.encoder.compress.calibrate import calibrate
        from binsearch.encoder.model import Encoder

        teacher = Encoder(args.model).model
        compressed = calibrate(
            model,
            teacher,
            compressed,
            texts,
            epochs=1000,  # bounded by the deadline
            layerwise=args.distill == "layerwise",
            deadline=deadline,
        )
    elif args.distill != "none":
        print("note: no time left for distillation; raise --minutes", file=sys.stderr)
    config = save_compressed(model, compressed, out)
    print_allocation(report, sys.stderr)
    bits = config["bits_per_weight"]
    cal = config.get("calibration") or {}
    distilled = f", distilled {cal['steps']} steps" if cal else ""
    print(
        f"compressed {len(report)} weight matrices ({bits['weights']:,} weights) to "
        f"{bits['stored_bits']:.3f} stored bits per weight ({bits['sign_bits']:.2f} sign bits)"
        f"{distilled} on {len(texts):,} texts in "
        f"{time.monotonic() - started:.0f}s; wrote {out} ({config['size_bytes'] / 1e6:.1f} MB)",
        file=sys.stderr,
    )


def print_allocation(report: dict, file) -> None:
    """One line per weight matrix: its shape, its bits, and the measured losses."""
    for name, r in report.items():
        shape = "x".join(map(str, r["shape"]))
        print(f"  {name:<52} {shape:>10}  {r['stored_bits']:.2f} bits", file=file)


def read_wordnet(root: Path = WORDNET) -> list[str]:
    """Every WordNet synset as ``"<first lemma>: <gloss>"`` (117,659 texts from the
    Debian package wordnet-base), in file order; empty when it is not installed."""
    texts: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{pos}"
        if not path.is_file():
            return []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            if len(fields) > 4 and gloss.strip():
                texts.append(f"{fields[4].replace('_', ' ')}: {gloss.strip()}")
    return texts


def calibration_sources(builtin: str, corpora: list[str]) -> dict[str, list[str]]:
    """Calibration texts by source: the ``builtin`` ones (comma-separated names of
    :data:`SOURCES`, or ``none``) and every text of ``corpora`` (documents, and
    queries of a BEIR folder). Raises :class:`UsageError` for an unknown name, a
    corpus without text, or no text at all."""
    from binsearch.collection.corpus import CorpusError, read_corpus, read_queries

    names = [s.strip() for s in builtin.split(",") if s.strip() and s.strip() != "none"]
    unknown = sorted(set(names) - set(SOURCES))
    if unknown:
        raise UsageError(f"--sources: unknown {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    sources: dict[str, list[str]] = {}
    if "wordnet" in names:
        glosses = read_wordnet()
        if glosses:
            sources["wordnet"] = glosses
        else:
            print(
                f"note: no WordNet at {WORDNET} (apt-get install wordnet-base); skipped",
                file=sys.stderr,
            )
    paths = ([SAMPLE_CORPUS] if "cranfield" in names else []) + [Path(c) for c in corpora]
    for path in paths:
        label = "cranfield" if path == SAMPLE_CORPUS else str(path)
        try:
            found = [d.content for d in read_corpus(path, empty="skip")]
        except CorpusError as exc:
            raise UsageError(f"calibration corpus {label}: {exc}") from None
        if path.is_dir() and (path / "queries.jsonl").is_file():
            found += list(read_queries(path).values())
        found = [t for t in found if t.strip()]
        if not found:
            raise UsageError(f"calibration corpus {label}: no text")
        sources[label] = sources.get(label, []) + found
    if not sources:
        raise UsageError("no calibration text: name a --sources entry or a --calibrate corpus")
    return dict(sorted(sources.items(), key=lambda kv: kv[0] not in SOURCES))


def calibration_texts(sources: dict[str, list[str]], size: int) -> list[str]:
    """A fixed random sample of ``size`` texts for quantization and distillation,
    an equal share from each source (all of a source smaller than its share; what
    it leaves goes to the others)."""
    import random

    rng = random.Random(0)
    texts: list[str] = []
    left = sorted(sources.items(), key=lambda kv: len(kv[1]))
    for i, (_, found) in enumerate(left):
        share = (size - len(texts)) // (len(left) - i)
        texts += found if len(found) <= share else rng.sample(found, share)
    rng.shuffle(texts)
    return texts


COMMANDS = {
    "compress-encoder": cmd_compress_encoder,
}
