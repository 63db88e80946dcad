"""The ``binsearch`` command line: the parser and the one place errors become messages.

Every failure a user can cause ends in one ``error: ...`` line and exit code 2,
never a traceback (set ``BINSEARCH_DEBUG=1`` to see one anyway).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from binsearch.cli import compress, index, quality, search, serve, upgrade
from binsearch.cli.common import UsageError

#: One module per command (quality: train-binarizer, eval, demo), in ``--help`` order.
MODULES = (index, search, serve, upgrade, quality, compress)


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

    for module in MODULES:
        module.add_parsers(sub)
    return parser


COMMANDS = {name: run for module in MODULES for name, run in module.COMMANDS.items()}


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
    from binsearch.collection.corpus import CorpusError
    from binsearch.distributed.errors import ShardUnavailable
    from binsearch.encoder.model import ModelError
    from index import IndexFormatError

    known = (UsageError, CorpusError, ModelError, IndexFormatError, ValueError, OSError)
    known += (ShardUnavailable,)
    if isinstance(exc, known):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (set BINSEARCH_DEBUG=1 for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
