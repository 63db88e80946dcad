"""Issue 23, fault 6: a killed ``binsearch upgrade`` is finished or cleaned up by its re-run.

A kill used to leave ``DIR.upgrading``, and the re-run refused with
``DIR.upgrading exists and is not empty; choose a new directory``, naming a
directory the user never chose. Real processes are killed (SIGKILL) at each
step: inside the bulk load, after the old directory moved aside, after the new
collection took its name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from binsearch import Collection
from binsearch.cli.main import main
from binsearch.codes.codecs import make_codec
from binsearch.collection.coded_index import CodedIndex

KILL_AT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from binsearch.collection.collection import Collection
    step, root = sys.argv[1], Path(sys.argv[2])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if step == "bulk":
        Collection.add_codes = lambda self, *a, **k: die()
    else:
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if (step == "first rename" and Path(src) == root) or (
                step == "second rename" and Path(dst) == root
            ):
                die()
        os.replace = replace
    from binsearch.cli.main import main
    sys.exit(main(["upgrade", str(root)]))
    """
)


def old_directory(path: Path) -> np.ndarray:
    """An index directory as an older binsearch wrote it (manifest, arrays, documents.jsonl)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    codec = make_codec("residual", 384, 2)
    meta = {"model": "all-MiniLM-L6-v2", "codec": codec.config(), "documents": "documents.jsonl"}
    CodedIndex.from_embeddings(x, codec, meta=meta).index.save(path)
    rows = [{"key": i, "id": f"d{i}", "title": "", "text": f"t{i}"} for i in range(12)]
    (path / "documents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return x


@pytest.mark.parametrize("step", ["bulk", "first rename", "second rename"])
def test_a_killed_upgrade_is_finished_by_its_rerun(tmp_path, step):
    old = tmp_path / "old"
    x = old_directory(old)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT, step, str(old)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert main(["upgrade", str(old)]) == 0
    with Collection.open(old) as c:
        assert len(c) == 12 and c.get("d7")["text"] == "t7" and c.check()["ok"]
        assert c.search(embeddings=x[3:4], k=1)[0].ids == ["d3"]
    assert (tmp_path / "old.pre-upgrade" / "documents.jsonl").is_file()
    assert not (tmp_path / "old.upgrading").exists()


def test_a_work_folder_not_made_by_upgrade_is_left_alone(tmp_path, capsys):
    old = tmp_path / "old"
    old_directory(old)
    (tmp_path / "old.upgrading").mkdir()
    (tmp_path / "old.upgrading" / "mine.txt").write_text("the user's")
    assert main(["upgrade", str(old)]) == 2
    assert "not made by `binsearch upgrade`" in capsys.readouterr().err
    assert (tmp_path / "old.upgrading" / "mine.txt").read_text() == "the user's"
