"""The ``upgrade`` command: an index directory of an older binsearch into a collection."""

from __future__ import annotations

import argparse
import sys


def add_parsers(sub: argparse._SubParsersAction) -> None:
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


def cmd_upgrade(args: argparse.Namespace) -> None:
    from binsearch.collection.upgrade import upgrade

    kept = upgrade(args.dir)
    print(
        f"converted {args.dir} into a collection; the old directory is kept at {kept}",
        file=sys.stderr,
    )


COMMANDS = {"upgrade": cmd_upgrade}
