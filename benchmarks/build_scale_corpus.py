"""Build the >= 100k-document corpus for quality at scale (no judgments: float top-10 is the truth).

Sources, from Debian packages:

* ``wordnet`` (default; ``apt-get install wordnet-base``): 117,659 synset
  glosses, embedded as ``"<first lemma>: <gloss>"`` (about 22 tokens each, so
  20-40 minutes on 2 cores);
* ``gcide`` (``apt-get install dict-gcide``): 126,236 dictionary entries, first
  ``--max-chars`` characters (longer texts: several times slower to embed).

The embeddings (default MiniLM) are cached OUTSIDE the repository, by default
in ``~/.cache/binsearch/<source>/`` (or ``$BINSEARCH_SCALE_CACHE``)::

    corpus.npy   float32 (n, 384), L2-normalised, one row per entry
    ids.json     entry names in row order, model, recipe

``benchmarks/quality.py`` holds out 1,000 rows as queries and skips this corpus,
saying how to build it, when the cache is absent. Build once, niced::

    nice -n 10 python benchmarks/build_scale_corpus.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

SOURCES = {"wordnet": Path("/usr/share/wordnet"), "gcide": Path("/usr/share/dictd")}
PACKAGES = {"wordnet": "wordnet-base", "gcide": "dict-gcide"}
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def cache_dir(source: str = "wordnet") -> Path:
    """Where the embeddings of ``source`` are cached (outside the repository)."""
    root = os.environ.get("BINSEARCH_SCALE_CACHE", "~/.cache/binsearch")
    return Path(root).expanduser() / source


def read_wordnet(root: Path, max_chars: int) -> tuple[list[str], list[str]]:
    """``(names, texts)`` of every synset: first lemma and gloss, in file order."""
    names, texts = [], []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (
            (root / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines()
        ):
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            lemma = fields[4].replace("_", " ")
            names.append(f"{pos}:{fields[0]}:{lemma}")
            texts.append(f"{lemma}: {gloss.strip()}"[:max_chars])
    return names, texts


def _b64(s: str) -> int:
    """dictd's base-64 integers (offsets and lengths in the .index file)."""
    value = 0
    for ch in s:
        value = value * 64 + _B64.index(ch)
    return value


def read_gcide(root: Path, max_chars: int) -> tuple[list[str], list[str]]:
    """``(headwords, texts)`` of every distinct GCIDE entry, in index order."""
    data = gzip.open(root / "gcide.dict.dz").read()
    seen: set[tuple[int, int]] = set()
    names, texts = [], []
    for line in (root / "gcide.index").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-"):
            continue
        span = (_b64(parts[1]), _b64(parts[2]))
        if span in seen:  # several headwords point at one entry
            continue
        seen.add(span)
        raw = data[span[0] : span[0] + span[1]].decode("utf-8", "replace")
        text = re.sub(r"\s+", " ", raw).strip()[:max_chars]
        if text:
            names.append(parts[0])
            texts.append(text)
    return names, texts


CHUNK = 8192


def _encode_resumable(enc: object, texts: list[str], parts: Path) -> np.ndarray:
    """Encode ``texts`` in chunks of ``CHUNK`` saved under ``parts``, so an
    interrupted build resumes where it stopped. Returns float32 ``(n, d)``."""
    from tqdm import tqdm

    parts.mkdir(parents=True, exist_ok=True)
    out = []
    for start in tqdm(range(0, len(texts), CHUNK), desc="chunks", unit="chunk"):
        part = parts / f"{start:08d}-{len(texts)}.npy"
        if not part.exists():
            emb = enc.encode(texts[start : start + CHUNK], batch_size=128)
            tmp = part.with_suffix(".tmp.npy")
            np.save(tmp, np.asarray(emb, dtype=np.float32))
            tmp.replace(part)
        out.append(np.load(part))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--source", choices=sorted(SOURCES), default="wordnet")
    ap.add_argument("--out", type=Path, default=None, help="cache directory (default above)")
    ap.add_argument("--max-chars", type=int, default=300, help="characters embedded per entry")
    ap.add_argument("--limit", type=int, default=0, help="embed only the first N entries (0: all)")
    args = ap.parse_args(argv)
    root = SOURCES[args.source]
    if not root.is_dir():
        print(
            f"error: {root} is missing (apt-get install {PACKAGES[args.source]})", file=sys.stderr
        )
        return 2
    reader = read_wordnet if args.source == "wordnet" else read_gcide
    names, texts = reader(root, args.max_chars)
    if args.limit:
        names, texts = names[: args.limit], texts[: args.limit]
    print(f"{args.source}: {len(texts):,} entries; embedding with MiniLM")
    from binsearch.encoder.model import Encoder

    enc = Encoder()
    out_dir = args.out or cache_dir(args.source)
    out_dir.mkdir(parents=True, exist_ok=True)
    emb = _encode_resumable(enc, texts, out_dir / "parts")
    np.save(out_dir / "corpus.npy", emb)
    meta = {
        "ids": names,
        "model": enc.name,
        "recipe": f"{args.source}, first {args.max_chars} chars",
    }
    (out_dir / "ids.json").write_text(json.dumps(meta))
    print(f"wrote {out_dir / 'corpus.npy'} {emb.shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
