"""The ``compress-encoder`` subcommand."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from binsearch.cli_common import (
    SAMPLE_CORPUS,
    UsageError,
    _positive_int,
)
from binsearch.encoder import DEFAULT_MODEL


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands on ``sub`` (their handler in ``func``)."""
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
    "compress-encoder": cmd_compress_encoder,
}
