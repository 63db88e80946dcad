"""What every ``binsearch`` subcommand shares: argument types, the usage error, the sample corpus."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from binsearch.codes.codecs import CODECS, LEARNED_CODECS

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "data" / "cranfield"
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


def print_hits(hits: list[dict]) -> None:
    """Print ranked hits, one line each: rank, score, id and title (or the start of the text)."""
    for rank, hit in enumerate(hits, 1):
        title = hit["title"] or hit["text"]
        title = title if len(title) <= 90 else title[:87] + "..."
        print(f"{rank:3d}. {hit['score']:7.4f}  [{hit['id']}] {title}")


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision``: the encoder's arithmetic (docs/encoder.md, "Precision")."""
    from binsearch.encoder.precision import PRECISION_ENV, PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="encoder arithmetic on the torch path: auto (default, or $"
        f"{PRECISION_ENV}) runs the fastest one measured faithful to fp32 on this "
        "machine (e.g. bf16 on CPUs with AMX); fp32, bf16, int8 or mixed (int8 on the "
        "layers that tolerate it, bf16 elsewhere) force one",
    )


def apply_precision(args: argparse.Namespace) -> None:
    """Make ``--precision`` the process's choice: every encoder it builds (in the
    collection, the shards, the server) reads ``$BINSEARCH_ENCODER_PRECISION``."""
    from binsearch.encoder.precision import PRECISION_ENV

    if getattr(args, "precision", None):
        os.environ[PRECISION_ENV] = args.precision
