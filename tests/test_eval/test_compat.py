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
