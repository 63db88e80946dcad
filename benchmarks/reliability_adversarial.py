"""The adversarial re-run of issue 23 over what changed: random damage and live readers.

Three parts, each with counts written to ``--json``:

* ``wal``: a crash image (50 documents snapshotted, then 10 single adds only in
  the WAL); ``--flips`` copies, each with one random byte of the WAL changed,
  and ``--cuts`` copies with the WAL cut at a random length. Outcomes: refused
  in one line, opened with all 60, or opened with fewer (silent loss; for a cut
  that is the torn-tail rule, counted apart).
* ``journal``: a closed collection whose journal (20 single adds) is in
  ``documents.db``; ``--flips`` copies with one random byte of the file
  changed. Outcomes: refused on open, refused by ``check()``, opened with every
  document's row and top hit as before, or *silently different* (the fault).
* ``kill``: a writer process (single adds, a snapshot every 20 writes, read-only
  opens beside it that keep SQLite from emptying its log) killed with SIGKILL
  ``--kills`` times; each restart must open (no false refusal of the WAL) with
  every acknowledged add.
* ``cli``: ``binsearch search DIR`` run ``--cli-runs`` times beside a
  ``binsearch serve`` taking 5-document POST batches and a snapshot a second.

    python benchmarks/reliability_adversarial.py --json results/reliability/adversarial.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def copy_image(src: Path, dst: Path) -> Path:
    for file in src.rglob("*"):
        if file.is_file() and file.name not in {"collection.lock", "documents.db-shm"}:
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return dst


def wal_part(root: Path, flips: int, cuts: int, seed: int) -> dict[str, int]:
    from binsearch import Collection

    rng = np.random.default_rng(seed)
    c = Collection.create(root / "live", "residual", 2, model=None, dim=DIM)
    c.add([f"a{i}" for i in range(50)], embeddings=unit(rng, 50))
    c.snapshot()
    for i in range(10):
        c.add([f"b{i}"], embeddings=unit(rng, 1))
    image = copy_image(c.path, root / "image")
    c.close(snapshot=False)
    wal = (image / "documents.db-wal").read_bytes()
    counts = {"flips": flips, "flip_refused": 0, "flip_opened_whole": 0, "flip_silent_loss": 0}
    counts.update({"cuts": cuts, "cut_refused": 0, "cut_opened_whole": 0, "cut_torn_tail": 0})
    for trial in range(flips + cuts):
        work = root / f"t{trial}"
        shutil.copytree(image, work)
        data = bytearray(wal)
        kind = "flip" if trial < flips else "cut"
        if kind == "flip":
            data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
        else:
            data = data[: int(rng.integers(32, len(data)))]
        (work / "documents.db-wal").write_bytes(bytes(data))
        try:
            with Collection.open(work) as opened:
                n = len(opened)
                opened.check()
            key = "opened_whole" if n == 60 else ("silent_loss" if kind == "flip" else "torn_tail")
        except Exception as exc:  # noqa: BLE001 -- any refusal counts; it must be one line
            assert "\n" not in str(exc), str(exc)
            key = "refused"
        counts[f"{kind}_{key}"] += 1
        shutil.rmtree(work)
    return counts


def journal_part(root: Path, flips: int, seed: int) -> dict[str, int]:
    from binsearch import Collection

    rng = np.random.default_rng(seed)
    c = Collection.create(root / "j", "residual", 2, model=None, dim=DIM)
    base = unit(rng, 30)
    c.add([f"a{i}" for i in range(30)], embeddings=base)
    c.snapshot()
    extra = unit(rng, 20)
    for i in range(20):
        c.add([f"b{i}"], embeddings=extra[i : i + 1], texts=[f"text {i}"])
    c.close(snapshot=False)
    ids = [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(20)]
    vectors = np.concatenate([base, extra])

    def state(path: Path) -> tuple:
        with Collection.open(path, verify=False, readonly=True) as opened:
            rows = tuple(json.dumps(opened.get(i), sort_keys=True) for i in ids)
            hits = opened.search(embeddings=vectors, k=3)
            tops = tuple((tuple(h.ids), tuple(np.round(h.scores, 5))) for h in hits)
            try:
                opened.check()
                checked = True
            except Exception:  # noqa: BLE001
                checked = False
        return rows, tops, checked

    clean = state(c.path)[:2]
    data = (c.path / "documents.db").read_bytes()
    # Half the flips anywhere in the file, half inside the journal's blobs (keys, codes, scales).
    with sqlite3.connect(c.path / "documents.db") as db:
        blobs = [b for row in db.execute("SELECT keys, codes, scales FROM changes") for b in row]
    spans = [(data.find(b), len(b)) for b in blobs if b and data.count(b) == 1]
    counts = {"flips": flips, "targeted": flips // 2, "journal_blobs": len(spans)}
    counts.update({"refused_on_open": 0, "refused_by_check": 0, "same": 0})
    counts["silently_different"] = 0
    for trial in range(flips):
        work = root / f"j{trial}"
        shutil.copytree(c.path, work)
        changed = bytearray(data)
        if trial < flips // 2:
            start, length = spans[int(rng.integers(len(spans)))]
            at = start + int(rng.integers(length))
        else:
            at = int(rng.integers(len(changed)))
        changed[at] ^= int(rng.integers(1, 256))
        (work / "documents.db").write_bytes(bytes(changed))
        try:
            rows, tops, checked = state(work)
        except Exception:  # noqa: BLE001 -- refused on open (or a row refused on read)
            counts["refused_on_open"] += 1
        else:
            if not checked:
                counts["refused_by_check"] += 1
            elif (rows, tops) == clean:
                counts["same"] += 1
            else:
                counts["silently_different"] += 1
        shutil.rmtree(work)
    return counts


KILLED_WRITER = """
import sys, threading, time
import numpy as np
from binsearch import Collection
path, ack = sys.argv[1], sys.argv[2]
c = Collection.open(path)
stop = False

def reader():  # read-only opens pin the log, so SQLite overwrites it in place
    while not stop:
        with Collection.open(path, readonly=True) as r:
            time.sleep(0.02)

threading.Thread(target=reader, daemon=True).start()
rng = np.random.default_rng(int(sys.argv[3]))
start = int(sys.argv[4])
with open(ack, "a", buffering=1) as log:
    for i in range(start, start + 100000):
        x = rng.standard_normal((1, 16)).astype(np.float32)
        c.add([f"k{i}"], embeddings=x / np.linalg.norm(x))
        log.write(f"k{i}\\n")
        if i % 20 == 0:
            c.snapshot()
"""


def kill_part(root: Path, rounds: int, seed: int) -> dict[str, object]:
    """SIGKILL a writer (single adds, a snapshot every 20, read-only opens beside it)
    at a random instant, ``rounds`` times; reopen and check every acknowledged add."""
    from binsearch import Collection

    rng = np.random.default_rng(seed)
    path, ack = root / "k", root / "ack.log"
    root.mkdir(parents=True, exist_ok=True)
    Collection.create(path, "residual", 2, model=None, dim=DIM).close()
    ack.touch()
    counts = {"rounds": rounds, "refused": 0, "acknowledged": 0, "missing": 0, "examples": []}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for r in range(rounds):
        start = 1_000_000 * (r + 1)
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(path), str(ack), str(r), str(start)],
            env=env,
        )
        time.sleep(1.0 + float(rng.uniform(0, 1.5)))
        proc.kill()
        proc.wait()
        acked = ack.read_text().split()
        try:
            with Collection.open(path) as c:
                missing = [i for i in acked if c.get(i) is None]
                c.check()
        except Exception as exc:  # noqa: BLE001 -- a refusal after a plain SIGKILL is a false alarm
            counts["refused"] += 1
            counts["examples"].append(str(exc)[:300])
            break
        counts["acknowledged"] = len(acked)
        counts["missing"] += len(missing)
    return counts


def cli_part(root: Path, runs: int) -> dict[str, object]:
    """``binsearch search DIR`` beside a live server under write and snapshot load."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "test_server"))
    from server_procs import ServerProcess, documents

    from binsearch import Collection

    directory = root / "served"
    Collection.create(directory, "residual", 2).close()  # the bundled model: text queries work
    env = {"BINSEARCH_SNAPSHOT_EVERY": "1000000"}
    server = ServerProcess(directory, root / "server.log", env).start()
    server.wait_ready()
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            n, last = 0, time.monotonic()
            while not stop.is_set():
                ids = [f"w{n + j}" for j in range(5)]
                client.post("/documents", json=documents(ids)).raise_for_status()
                n += 5
                written[0] = n
                if time.monotonic() - last > 1.0:
                    client.post("/snapshot").raise_for_status()
                    last = time.monotonic()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    failures, examples = 0, []
    try:
        for _ in range(runs):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "binsearch.cli",
                    "search",
                    str(directory),
                    "text",
                    "-k",
                    "3",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if proc.returncode != 0:
                failures += 1
                examples.append(proc.stderr.strip()[-300:])
    finally:
        stop.set()
        thread.join(30)
        server.stop()
    return {
        "runs": runs,
        "failures": failures,
        "documents_written": written[0],
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument("--cuts", type=int, default=50)
    parser.add_argument("--cli-runs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="binsearch-adversarial-"))
    try:
        result = {
            "wal": wal_part(root / "wal", args.flips, args.cuts, args.seed),
            "journal": journal_part(root / "journal", args.flips, args.seed),
        }
        print(json.dumps(result), flush=True)
        if args.kills:
            result["kill"] = kill_part(root / "kill", args.kills, args.seed)
            print(json.dumps(result["kill"]), flush=True)
        if args.cli_runs:
            result["cli"] = cli_part(root / "cli", args.cli_runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("BINSEARCH_WARM_MODEL", "false")
    main()
