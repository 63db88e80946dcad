"""``binsearch eval --mode compat``: the four combinations of old/new queries on old/new codes."""

from __future__ import annotations

import numpy as np
import pytest

from binsearch.cli.main import main
from binsearch.codes.varwidth import VarWidthCodec
from binsearch.eval.compat import COMBINATIONS, evaluate_compat
from binsearch.eval.metrics import ndcg_at_k
from binsearch.eval.quality import load_embeddings

MINILM = "embeddings/all-MiniLM-L6-v2"
MPNET = "embeddings/all-mpnet-base-v2"


def test_four_combinations_on_cranfield(shared_data) -> None:
    """old/old equals a numpy ranking of the codes; the learned map moves toward the new model."""
    base = shared_data / "cranfield"
    rows = evaluate_compat(base, base / MINILM, base / MPNET, [1], steps=40)
    got = {r["combination"]: r for r in rows}
    assert tuple(got) == COMBINATIONS
    assert {r["bits_per_vector"] for r in rows} == {384}  # both models store the same bits
    old = load_embeddings(base, base / MINILM)
    codec = VarWidthCodec.fit(old.corpus, 384)
    order = np.argsort(-codec.scores(old.queries, old.corpus), axis=1, kind="stable")[:, :10]
    want = np.mean(
        [
            ndcg_at_k([old.doc_ids[j] for j in r], old.qrels[q], 10)
            for r, q in zip(order, old.query_ids, strict=True)
        ]
    )
    assert got["old/old"]["ndcg@10"] == pytest.approx(want, abs=0.005)
    # new-model queries on the old codes rank more like the new float model than old queries do
    vs_new = "float_recall@10_vs_new"
    assert got["new-on-old"][vs_new] > got["old/old"][vs_new] + 0.05
    assert got["new-on-old"]["ndcg@10"] > 0.33  # the bridge alone scored 0.3405 at 448 bits


def test_compat_mode_errors(capsys, shared_data) -> None:
    base = shared_data / "cranfield"
    code = main(["eval", str(base), "--mode", "compat", "--embeddings", str(base / MINILM)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--new-embeddings" in err[0]
    code = main(["eval", str(base), "--new-embeddings", str(base / MPNET)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "error: --new-embeddings goes with --mode compat"


def test_train_binarizer_writes_a_compatible_varwidth_codec(tmp_path, capsys, shared_data) -> None:
    """`train-binarizer --old CODEC.json`: new-model queries rank the old codes like the new model."""
    import json

    from binsearch.codes.codecs import codec_from_config
    from binsearch.collection.coded_index import CodedIndex

    base = shared_data / "cranfield"
    old = load_embeddings(base, base / MINILM)
    new = load_embeddings(base, base / MPNET)
    codec = VarWidthCodec.fit(old.corpus, 448)
    (tmp_path / "old.json").write_text(json.dumps(codec.config()))
    argv = ["train-binarizer", base / MPNET, "--old", tmp_path / "old.json"]
    argv += ["--old-embeddings", base / MINILM, "--out", tmp_path / "m", "--steps", "30"]
    assert main([str(a) for a in argv]) == 0
    compat = codec_from_config(json.loads((tmp_path / "m" / "codec.json").read_text()))
    assert (compat.name, compat.query_dim, compat.m) == ("varwidth-compat", 768, codec.m)
    index = CodedIndex(compat, CodedIndex.from_embeddings(old.corpus, codec).index)
    _, ranked = index.topk(new.queries, 10)
    top = np.argsort(-(new.queries @ new.corpus.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ranked, top, strict=True)])
    assert overlap > 0.6  # old queries on these codes: 0.586 of the new model's top-10
    capsys.readouterr()
    bad = main(
        ["train-binarizer", str(base / MPNET), "--old", str(base / "qrels" / "test.tsv")]
        + ["--old-embeddings", str(base / MINILM), "--out", str(tmp_path / "x")]
    )
    assert bad == 2 and "not a collection or codec JSON" in capsys.readouterr().err
