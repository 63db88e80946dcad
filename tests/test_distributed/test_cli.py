"""``binsearch index --shards`` and ``--ray`` through the command line's ``main``."""

from __future__ import annotations

from binsearch.cli.main import main
from binsearch.distributed import ShardedCollection


def test_index_shards_builds_a_sharded_collection(ray_cluster, bundled, tmp_path, capsys) -> None:
    emb = bundled / "embeddings" / "all-MiniLM-L6-v2"
    out = tmp_path / "sharded"
    argv = ["index", str(bundled), "--skip-empty", "--embeddings", str(emb), "--out", str(out)]
    assert main([*argv, "--shards", "2"]) == 0
    assert "in 2 shards" in capsys.readouterr().err
    sc = ShardedCollection.open(out)  # the session's Ray is already initialised: it is used
    try:
        assert len(sc) > 1300 and sc.stats()["shards"] == 2
        assert sc.get("1")["title"]
    finally:
        sc.close()
    # Collection.open and `binsearch search` on it say what it is, in one line.
    assert main(["search", str(out), "flutter"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "sharded collection" in err and "\n" not in err
    # --ray without --shards is a usage error, before anything is read.
    assert main([*argv[:-1], str(tmp_path / "other"), "--ray", "auto"]) == 2
    assert "--shards" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
