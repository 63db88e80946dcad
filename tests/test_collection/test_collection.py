"""binsearch.Collection against a numpy brute force: add, replace, delete, filter, persistence."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from binsearch import AddResult, Collection, CollectionError
from binsearch.codes.quantize import residual_binarize

DIM = 32


def reference_values(x: np.ndarray, planes: int) -> np.ndarray:
    """Code values ``sum_p alpha_p sign_p`` of the residual codec, by the quantizer alone."""
    signs, scales = residual_binarize(x.astype(np.float32), planes, axis=-1)
    return np.einsum("pnd,pn->nd", signs.astype(np.float64), scales[:, :, 0].astype(np.float64))


def brute_force(docs: dict[str, tuple[int, np.ndarray]], query: np.ndarray, k: int, planes: int):
    """Top-k ids by cosine of code values; ties by key ascending, as the index breaks them."""
    ids = list(docs)
    keys = np.array([docs[i][0] for i in ids])
    values = reference_values(np.stack([docs[i][1] for i in ids]), planes)
    q = reference_values(query[None, :], planes)[0]
    scores = values @ q / (np.linalg.norm(values, axis=1) * np.linalg.norm(q))
    order = np.lexsort((keys, -np.round(scores, 5)))[:k]
    return [ids[j] for j in order], scores[order]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_add_replace_delete_against_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model: dict[str, tuple[int, np.ndarray]] = {}
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    x = unit(rng, 300)
    ids = [f"d{i}" for i in range(300)]
    assert c.add(ids, x, texts=[f"text {i}" for i in ids]) == AddResult(300, 0)
    model.update({i: (k, v) for k, (i, v) in enumerate(zip(ids, x, strict=True))})
    # Replace 20 (keys kept), delete 30, add 50 more.
    new = unit(rng, 20)
    assert c.add(ids[:20], new, texts=["new"] * 20).replaced == 20
    model.update({i: (model[i][0], v) for i, v in zip(ids[:20], new, strict=True)})
    assert c.delete(ids[100:130] + ["absent"]) == 30
    for i in ids[100:130]:
        del model[i]
    more = unit(rng, 50)
    c.add([f"e{i}" for i in range(50)], more)
    model.update({f"e{i}": (300 + i, v) for i, v in enumerate(more)})
    assert len(c) == len(model) == 320

    queries = unit(rng, 25)
    for reopen in (False, True):
        if reopen:
            c.close(snapshot=False)  # nothing saved: the journal alone brings it back
            c = Collection.open(tmp_path / "c")
        results = c.search(embeddings=queries, k=10)
        for q, got in zip(queries, results, strict=True):
            want, scores = brute_force(model, q, 10, 2)
            assert np.allclose(got.scores, scores, atol=1e-4)
            # Equal scores may differ in the last bit between the kernels and numpy.
            assert sorted(got.ids) == sorted(want) or np.allclose(got.scores[-1], scores[-1])
            assert got.ids[0] == want[0]
    assert c.get("d0")["text"] == "new" and c.get("d100") is None
    c.close()


def test_filter_returns_only_allowed_ids_in_brute_force_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = unit(rng, 200)
    ids = [str(i) for i in range(200)]
    with Collection.create(tmp_path / "c", "residual", 3, model=None, dim=DIM) as c:
        c.add(ids, x)
        allowed = ids[::7] + ["no-such-id"]
        q = unit(rng, 1)[0]
        got = c.search(embeddings=q[None, :], k=5, filter=allowed)[0]
        sub = {i: (int(i), x[int(i)]) for i in ids[::7]}
        want, _ = brute_force(sub, q, 5, 3)
        assert got.ids == want
        assert c.search(embeddings=q[None, :], k=5, filter=["no-such-id"])[0].ids == []


def test_rescore_ranks_by_the_float_query_against_code_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 100)
    with Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM) as c:
        c.add([str(i) for i in range(100)], x)
        q = unit(rng, 1)[0]
        got = c.search(embeddings=q[None, :], k=5, rescore=True)[0]
        values = reference_values(x, 2)
        cos = values @ q / np.linalg.norm(values, axis=1)
        assert np.allclose(got.scores, np.sort(cos)[::-1][: len(got)], atol=1e-4)


def test_documents_and_metadata_round_trip(tmp_path: Path) -> None:
    with Collection.create(tmp_path / "c", "sign", model=None, dim=DIM) as c:
        doc = {"title": "T", "text": "body é \u2603", "metadata": {"tags": ["a"], "n": 1}}
        c.add(["x"], unit(np.random.default_rng(3), 1), documents=[doc])
        hit = c.search(embeddings=unit(np.random.default_rng(3), 1), k=1)[0]
        assert hit.ids == ["x"] and hit.documents() == [{"id": "x", **doc}]
        assert c.get("x") == {"id": "x", **doc}


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


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.add(["a", "a"], np.ones((2, DIM))), "unique"),
        (lambda c: c.add(["a"], np.ones((1, DIM + 1))), f"(1, {DIM})"),
        (lambda c: c.add(["a"], np.zeros((1, DIM))), "all zeros"),
        (lambda c: c.add(["a"], np.full((1, DIM), np.nan)), "finite"),
        (lambda c: c.add(["a"], np.full((1, DIM), 1e300)), "finite"),
        (lambda c: c.add([" "], np.ones((1, DIM))), "non-blank"),
        (lambda c: c.add(["a"], texts=["no model"]), "no model"),
        (lambda c: c.search(embeddings=np.ones((1, DIM)), k=0), "positive"),
        (lambda c: c.search(), "one of them"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, call, message: str) -> None:
    with Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM) as c:
        with pytest.raises(CollectionError, match=re.escape(message)):
            call(c)
        assert len(c) == 0


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


def test_upgrade_converts_an_old_index_directory_with_its_log(tmp_path: Path) -> None:
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
