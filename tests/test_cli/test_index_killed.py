"""Issue 23, fault 4: ``binsearch index`` killed before its load starts leaves no usable directory.

The window ran from the moment ``collection.json`` appeared until ``bulk()``
marked the load in progress: a SIGKILL there left a valid, *empty*
collection, and ``binsearch search`` on it printed "(0 results)" with exit 0.
The kill is made deterministic: the indexing process kills itself with
SIGKILL at the first step after the directory is created.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from binsearch import Collection
from binsearch.cli.main import main
from binsearch.collection.collection import CollectionError

MINILM = "embeddings/all-MiniLM-L6-v2"

KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import binsearch.collection.ingest as ingest

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # the window: directory made, load not started

    ingest.{step} = killed
    from binsearch.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("step", ["_load", "bulk"])
def test_index_killed_right_after_creating_the_directory(tmp_path, bundled, capsys, step):
    lines = (bundled / "corpus.jsonl").read_text().splitlines()[:20]
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "collection"
    if step == "_load":
        script = KILLED.format(step="_load")
    else:  # inside _load, before bulk() runs its first line
        script = textwrap.dedent(
            """
            import os, signal, sys
            from binsearch.collection.collection import Collection
            def bulk(self):
                os.kill(os.getpid(), signal.SIGKILL)
            Collection.bulk = bulk
            from binsearch.cli.main import main
            sys.exit(main(sys.argv[1:]))
            """
        )
    argv = ["index", str(tmp_path / "corpus.jsonl"), "--out", str(out)]
    argv += ["--embeddings", str(bundled / MINILM)]
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "collection.json").is_file()  # the directory looks complete ...
    with pytest.raises(CollectionError, match="interrupted"):  # ... but is refused
        Collection.open(out)
    with pytest.raises(CollectionError, match="interrupted"):
        Collection.open(out, readonly=True)
    capsys.readouterr()
    code = main(["search", str(out), "q"])
    _, err = capsys.readouterr()
    assert code == 2 and "interrupted" in err and "\n" not in err.strip()


def test_an_index_that_finishes_opens(tmp_path, bundled):
    lines = (bundled / "corpus.jsonl").read_text().splitlines()[:20]
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "collection"
    argv = ["index", str(tmp_path / "corpus.jsonl"), "--out", str(out)]
    assert main([*argv, "--embeddings", str(bundled / MINILM)]) == 0
    with Collection.open(out, readonly=True) as c:
        assert len(c) == 20
        assert c.store.get_meta("bulk_in_progress") is None
        vector = c.index.get(np.array([0]))[0]
        assert vector.shape[0] == 1
