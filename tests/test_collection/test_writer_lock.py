"""Issue 23, fault 5: the one writer's lock cannot be deleted from under it.

The lock used to be a ``flock`` on ``collection.lock`` alone: deleting that file
while a server ran let a second process create a new one, lock it and write
beside the first (a code was lost). The lock is now on the directory itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_collection_faults import DIM, unit

from binsearch import Collection
from binsearch.collection.collection import CollectionError

HOLDER = textwrap.dedent(
    """
    import sys
    from binsearch import Collection
    c = Collection.open(sys.argv[1])
    print("open", flush=True)
    sys.stdin.readline()  # hold the collection until told
    c.close()
    """
)


@pytest.fixture
def held(tmp_path: Path):
    """A collection held open for writing by another (real) process."""
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    c.add(["a"], embeddings=unit(np.random.default_rng(0), 1))
    c.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(c.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "open"
    yield c.path
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(30) == 0


def test_a_second_writer_is_refused(held):
    with pytest.raises(CollectionError, match="open in another process"):
        Collection.open(held)


def test_deleting_the_lock_file_does_not_let_a_second_writer_in(held):
    (held / "collection.lock").unlink()
    with pytest.raises(CollectionError, match="open in another process"):
        Collection.open(held)
    with Collection.open(held, readonly=True) as reader:  # reading beside it still works
        assert reader.get("a") is not None


def test_the_lock_is_released_when_the_holder_is_killed(tmp_path):
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    c.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(c.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "open"
    proc.kill()
    proc.wait(30)
    with Collection.open(c.path) as again:
        assert len(again) == 0
