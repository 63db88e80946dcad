"""Read-only opens beside a writer that snapshots constantly (issue 23, fault 2).

A writer process replaces and deletes documents in batches of 5 (each
document's vector is a pure function of its id and a global version number;
its text names both) and snapshots every ``--snapshot-every`` batches,
appending every acknowledged write to a log. Meanwhile this process opens the
collection read-only again and again, and checks each open against:

* the acknowledged state: every write acknowledged before the open began is
  there (a later one may be too), every delete acknowledged before it is
  absent or replaced by a later version;
* itself: every document's code in the index is the code of the vector its
  stored text names (never an old vector under a new text), and a search by
  that vector finds it first.

A refused open (any exception) is a false alarm: the collection is live and
undamaged. Prints and writes a JSON of the counts::

    python benchmarks/readers_beside_writer.py --seconds 60 \
        --json results/reliability/readers_beside_writer.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 16
POOL = 200


def vector(doc_id: str, version: int) -> np.ndarray:
    seed = int(doc_id[1:]) * 1_000_003 + version
    x = np.random.default_rng(seed).standard_normal((1, DIM))
    return (x / np.linalg.norm(x)).astype(np.float32)


def writer(path: Path, ack: Path, seconds: float, snapshot_every: int) -> None:
    """Write batches until ``seconds`` pass; log ``id version`` (delete: ``id -version``)."""
    from binsearch import Collection

    rng = np.random.default_rng(0)
    c = Collection.create(path, "residual", 2, model=None, dim=DIM)
    version, batches = 0, 0
    with open(ack, "a", buffering=1) as log:
        ids = [f"d{i}" for i in range(POOL)]
        c.add(ids, embeddings=np.concatenate([vector(i, 0) for i in ids]), texts=ids)
        log.write("".join(f"{i} 0\n" for i in ids))
        log.write("ready\n")
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            version += 1
            picked = [f"d{i}" for i in rng.choice(POOL, 5, replace=False)]
            if rng.random() < 0.2:
                log.write("".join(f"? {i} -{version}\n" for i in picked[:2]))  # in flight
                c.delete(picked[:2])
                log.write("".join(f"{i} -{version}\n" for i in picked[:2]))
            else:
                log.write("".join(f"? {i} {version}\n" for i in picked))  # in flight
                c.add(
                    picked,
                    embeddings=np.concatenate([vector(i, version) for i in picked]),
                    texts=[f"{i} v{version}" for i in picked],
                )
                log.write("".join(f"{i} {version}\n" for i in picked))
            batches += 1
            if batches % snapshot_every == 0:
                c.snapshot()
            time.sleep(0.002)
    c.close()


def acknowledged(ack: Path, in_flight: bool = False) -> list[tuple[str, int]]:
    """The acknowledged writes in order: ``(id, version)``, a negative version for a delete.

    ``in_flight``: also the writes sent but not yet acknowledged (``? id version``
    lines): a reader may see a write committed before the writer logs its answer.
    """
    ops: list[tuple[str, int]] = []
    text = ack.read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():  # whole lines only
        parts = line.split()
        if parts and parts[0] == "?":
            if not in_flight:
                continue
            parts = parts[1:]
        if len(parts) == 2:
            ops.append((parts[0], int(parts[1])))
    return ops


def allowed_states(
    before: list[tuple[str, int]], after: list[tuple[str, int]]
) -> dict[str, set[int | None]]:
    """Each id's allowed states for a reader that opened between ``before`` and ``after``.

    The state acknowledged before the open, or one that a write sent later
    (acknowledged or still in flight: ``after`` holds both) made. Every write
    has its own version, so "later" is "not in ``before``".
    """
    allowed: dict[str, set[int | None]] = {}
    for doc_id, version in before:
        allowed[doc_id] = {None if version < 0 else version}
    for doc_id, version in set(after) - set(before):
        allowed.setdefault(doc_id, {None}).add(None if version < 0 else version)
    return allowed


def check_open(path: Path, before: list[tuple[str, int]], ack: Path) -> tuple[int, list[str]]:
    """Open read-only, check; (checks made, problems found)."""
    from binsearch import Collection

    problems, checks = [], 0
    with Collection.open(path, readonly=True) as c:
        seen: dict[str, int] = {}
        for doc_id in (f"d{i}" for i in range(POOL)):
            row = c.get(doc_id)
            if row is not None:
                text = row["text"]
                seen[doc_id] = int(text.split(" v")[1]) if " v" in text else 0
        keys = c.store.keys_of(list(seen))
        for doc_id, version in seen.items():
            codes, _ = c.index.get(np.array([keys[doc_id]]))
            checks += 1
            if not np.array_equal(codes, c.codec.encode(vector(doc_id, version)).words):
                problems.append(f"{doc_id}: code is not v{version}'s")
        allowed = allowed_states(before, acknowledged(ack, in_flight=True))
        for doc_id in (f"d{i}" for i in range(POOL)):
            checks += 1
            got = seen.get(doc_id)
            if got not in allowed.get(doc_id, {None}):
                problems.append(f"{doc_id}: the reader has {got}, acknowledged {allowed[doc_id]}")
        for doc_id in list(seen)[:5]:
            checks += 1
            (hit,) = c.search(embeddings=vector(doc_id, seen[doc_id]), k=1)
            if hit.ids[:1] != [doc_id]:
                problems.append(f"{doc_id}: not found first by its own vector")
        checks += 1
        if len(c) != len(seen):
            problems.append(f"index {len(c)} vs rows {len(seen)}")
    return checks, problems


def run(seconds: float, snapshot_every: int = 3) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="binsearch-readers-"))
    path, ack = root / "c", root / "ack.log"
    ack.touch()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--writer", str(path), str(ack), str(seconds)]
        + ["--snapshot-every", str(snapshot_every)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    while "ready" not in ack.read_text():
        if proc.poll() is not None:
            raise SystemExit("the writer failed to start")
        time.sleep(0.05)
    counts = {"opens": 0, "checks": 0, "false_alarms": 0, "stale_answers": 0}
    examples: list[str] = []
    while proc.poll() is None:
        before = acknowledged(ack)
        try:
            checks, problems = check_open(path, before, ack)
        except Exception as exc:  # noqa: BLE001 -- every refusal of a live collection counts
            counts["false_alarms"] += 1
            examples.append(f"{type(exc).__name__}: {exc}")
            continue
        counts["opens"] += 1
        counts["checks"] += checks
        counts["stale_answers"] += len(problems)
        examples.extend(problems[:3])
    written = acknowledged(ack)
    shutil.rmtree(root, ignore_errors=True)
    return {
        **counts,
        "seconds": seconds,
        "snapshot_every_batches": snapshot_every,
        "writer_exit": proc.returncode,
        "writes_acknowledged": sum(1 for _, v in written if v >= 0),
        "deletes_acknowledged": sum(1 for _, v in written if v < 0),
        "examples": examples[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--snapshot-every", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the counts here")
    parser.add_argument("--writer", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer(
            Path(args.writer[0]), Path(args.writer[1]), float(args.writer[2]), args.snapshot_every
        )
        return
    result = run(args.seconds, args.snapshot_every)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
