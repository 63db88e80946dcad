"""What only a local Collection has: snapshots, the directory, bulk loads, upgrade, the README example.

The collection API itself (add, replace, delete, search, filter, rescore, errors) is
in test_protocol.py, run against both a Collection and a ShardedCollection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from binsearch import Collection, CollectionError

DIM = 32


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_snapshot_writes_only_what_changed(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    with Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM) as c:
        c.add([str(i) for i in range(20_000)], unit(rng, 20_000))
        full = c.snapshot()["bytes_written"]
        for i in range(10):
            c.add([f"new{i}"], unit(rng, 1))
        small = c.snapshot()
        assert small["bytes_written"] < full / 50, (small, full)
        assert c.store.pending_changes() == 0


def test_directories_that_are_not_collections_are_named(tmp_path: Path) -> None:
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "shards.json").write_text("{}")
    with pytest.raises(CollectionError, match="sharded collection"):
        Collection.open(tmp_path / "sharded")
    with pytest.raises(CollectionError, match="does not exist"):
        Collection.open(tmp_path / "missing")
    c = Collection.create(tmp_path / "c", "sign", model=None, dim=DIM)
    with pytest.raises(CollectionError, match="open in another process"):
        Collection.open(tmp_path / "c")
    with Collection.open(tmp_path / "c", readonly=True) as reader:
        assert len(reader) == 0
        with pytest.raises(CollectionError, match="read-only"):
            reader.add(["a"], np.ones((1, DIM)))
    c.close()
    with pytest.raises(CollectionError, match="not empty"):
        Collection.create(tmp_path / "c", "sign", model=None, dim=DIM)


def test_interrupted_bulk_load_is_refused(tmp_path: Path) -> None:
    c = Collection.create(tmp_path / "c", "sign", model=None, dim=DIM)
    bulk = c.bulk()
    bulk.__enter__()
    c.add(["a"], np.ones((1, DIM)), keys=np.array([0]))
    c.close(snapshot=False)  # the process "dies" inside the bulk load
    with pytest.raises(CollectionError, match="interrupted"):
        Collection.open(tmp_path / "c")


def test_readme_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block, "the README has a Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102


def test_manifest_names_model_and_codec(tmp_path: Path) -> None:
    Collection.create(tmp_path / "c", "residual", 3, model=None, dim=DIM).close()
    manifest = json.loads((tmp_path / "c" / "collection.json").read_text())
    assert manifest["model"] is None and manifest["codec"]["planes"] == 3


def test_upgrade_converts_an_old_collection_directory_with_its_log(tmp_path: Path) -> None:
    import base64
    import zlib

    from binsearch.cli.main import main
    from binsearch.codes.codecs import make_codec
    from binsearch.collection.coded_index import CodedIndex

    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 384)).astype(np.float32)  # the model's width
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    codec = make_codec("residual", 384, 2)
    old = tmp_path / "old"
    meta = {"model": "all-MiniLM-L6-v2", "codec": codec.config(), "documents": "documents.jsonl"}
    CodedIndex.from_embeddings(x[:8], codec, meta=meta).index.save(old)
    rows = [{"key": i, "id": f"d{i}", "title": "", "text": f"t{i}"} for i in range(8)]
    (old / "documents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    codes = codec.encode(x[8:])
    records = [
        {
            "op": "upsert",
            "docs": [
                {"key": 8, "id": "d8", "title": "", "text": "t8", "metadata": None},
                {"key": 9, "id": "d1", "title": "", "text": "replaced", "metadata": None},
            ],
            "codes": base64.b64encode(codes.words.tobytes()).decode(),
            "scales": base64.b64encode(codes.scales.tobytes()).decode(),
        },
        {"op": "delete", "ids": ["d2"]},
    ]
    lines = [json.dumps(r).encode() for r in records]
    (old / "wal").mkdir()
    (old / "wal" / "00000000.log").write_bytes(
        b"".join(b"%08x " % zlib.crc32(p) + p + b"\n" for p in lines) + b"0000torn"
    )
    assert main(["upgrade", str(old)]) == 0
    with Collection.open(old) as c:
        assert len(c) == 8 and c.get("d1")["text"] == "replaced" and c.get("d2") is None
        assert c.search(embeddings=x[9:10], k=1)[0].ids == ["d1"]
        assert c.search(embeddings=x[8:9], k=1)[0].ids == ["d8"]
    assert (tmp_path / "old.pre-upgrade" / "documents.jsonl").is_file()


def test_a_learned_grid_collection_finds_each_document_by_its_own_embedding(tmp_path, bundled):
    from binsearch.collection.ingest import index_corpus

    emb = bundled / "embeddings" / "all-MiniLM-L6-v2"
    lines = (bundled / "corpus.jsonl").read_text().splitlines()[:400]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    with index_corpus(
        tmp_path / "c.jsonl",
        tmp_path / "grid",
        codec="grid",
        bits=2,
        embeddings=emb,
        skip_empty=True,
        progress=False,
    ) as c:
        ids = json.loads((emb / "ids.json").read_text())["corpus_ids"]
        x = np.load(emb / "corpus.npy")
        rows = [ids.index(json.loads(line)["_id"]) for line in lines[:50]]
        hits = c.search(embeddings=x[rows], k=1)
        own = sum(h.ids == [ids[r]] for h, r in zip(hits, rows, strict=True))
        assert own >= 45, own  # near-duplicate abstracts may outrank a few
        assert c.index.metric == getattr(c.codec, "metric", "cosine")
