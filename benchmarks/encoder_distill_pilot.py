"""Distillation pilots on the real MiniLM: one recipe from one post-training model.

Loads a compressed directory (``compress-encoder --distill none``), distils it
from the float MiniLM for ``--minutes`` with one recipe on the default
calibration text (bundled Cranfield), and measures the mean cosine to the
float embeddings on held-out SciFact text (``--held-out`` documents and as
many queries, never used for calibration) before and after. Run each recipe
from the same directory, under the same conditions::

    .venv/bin/python benchmarks/encoder_distill_pilot.py --start DIR --recipe layerwise
    .venv/bin/python benchmarks/encoder_distill_pilot.py --start DIR --recipe output

One JSON line per run is appended to ``results/encoder/pilots.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def held_out_texts(count: int) -> list[str]:
    """``count`` SciFact documents and ``count`` queries, a fixed random sample."""
    from binsearch.collection.corpus import read_corpus, read_queries

    rng = np.random.default_rng(1)
    docs = [d.content for d in read_corpus(DATA / "scifact", empty="skip")]
    queries = [q for q in read_queries(DATA / "scifact").values() if q.strip()]
    pick = [docs[i] for i in rng.permutation(len(docs))[:count]]
    return pick + [queries[i] for i in rng.permutation(len(queries))[:count]]


def mean_cosine(model, reference: np.ndarray, texts: list[str]) -> float:
    emb = model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    return float((emb * reference).sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", required=True, help="compressed directory to start from")
    parser.add_argument("--recipe", choices=("layerwise", "output"), required=True)
    parser.add_argument("--train-tables", action="store_true", help="train the word table too")
    parser.add_argument("--minutes", type=float, default=7.0)
    parser.add_argument("--held-out", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "results" / "encoder" / "pilots.jsonl"))
    parser.add_argument("--save", default=None, help="also write the distilled model here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from binsearch.cli.compress import calibration_texts
    from binsearch.encoder.compress.calibrate import calibrate
    from binsearch.encoder.compress.format import load_compressed, read_compressed, save_compressed
    from binsearch.encoder.model import Encoder

    teacher = Encoder(None).model
    student = load_compressed(args.start)
    compressed = read_compressed(args.start)
    held = held_out_texts(args.held_out)
    reference = teacher.encode(
        held, batch_size=32, convert_to_numpy=True, normalize_embeddings=True
    )
    before = mean_cosine(student, reference, held)
    texts = calibration_texts([], 4000)
    started = time.monotonic()
    result = calibrate(
        student,
        teacher,
        compressed,
        texts,
        epochs=1000,
        layerwise=args.recipe == "layerwise",
        lr=args.lr,
        deadline=started + 60 * args.minutes,
        train_tables=args.train_tables,
    )
    after = mean_cosine(student, reference, held)
    row = {
        "recipe": args.recipe,
        "train_tables": args.train_tables,
        "minutes": args.minutes,
        "lr": args.lr,
        "threads": args.threads,
        "start": Path(args.start).name,
        "held_out_texts": len(held),
        "cosine_before": round(before, 4),
        "cosine_after": round(after, 4),
        "steps": result.config["calibration"]["steps"],
        "running_cosine_train": result.config["calibration"]["running_cosine"],
        "load_avg": os.getloadavg()[0],
    }
    print(json.dumps(row))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    if args.save:
        save_compressed(student, result, args.save)


if __name__ == "__main__":
    main()
