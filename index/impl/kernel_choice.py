"""Which scan kernel is faster for a code shape on this machine, measured once.

A :class:`KernelChooser` answers ``choose(shape, nq, exact)`` with a kernel
name -- ``"popcount"`` (plane-pair popcounts, one query at a time over a block
of codes), ``"batch"`` (the query-blocked SIMD kernel of
:mod:`index.impl.batch_kernels`, batches only) or ``"sdc"`` (fast-scan nibble
tables, :mod:`index.impl.fastscan`) -- by timing them on random codes of that shape
the first time the shape is asked for. Every :class:`index.BinaryIndex` holds
one (``BinaryIndex(..., kernels=KernelChooser())``); by default they share
:func:`default_chooser`, so a process measures each shape once. A test passes
its own chooser with ``preset`` choices to force a kernel.

Measured choices may be kept on disk per machine (CPU model, its flags, numba
version) so that a fresh process does not measure again: ``cache_file``, by
default ``$BINSEARCH_KERNEL_CACHE`` if set (empty or ``off`` disables it), else
``~/.cache/binsearch/kernels.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
from llvmlite import binding as llvm_binding

from index.code_store import CodeStore
from index.durable import update_json_file
from index.impl import dispatch
from index.impl.batch_kernels import batch_supported
from index.impl.dispatch import Kernel
from index.impl.single_kernels import single_supported
from index.segments import SEGMENT_ROWS

__all__ = ["Kernel", "KernelChooser", "default_chooser", "machine_signature", "measure"]
#: Part of the disk cache's key: bumped when :func:`measure` changes, so older choices
#: are measured again (2: CPU time instead of wall time; 3: "batch" for a lone 1-plane query).
_MEASURE_VERSION = 3
#: ``(m, planes, query_planes, weights, metric)``: what a measurement depends on.
Shape = tuple[int, int, int, str, str]

_log = logging.getLogger(__name__)


def machine_signature() -> str:
    """CPU model, its LLVM feature flags and the numba version, hashed: the disk cache's key."""
    cpu = llvm_binding.get_host_cpu_name()
    features = llvm_binding.get_host_cpu_features().flatten()
    text = f"{platform.machine()}|{cpu}|{features}|{numba.__version__}|{_MEASURE_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _default_cache_file() -> Path | None:
    env = os.environ.get("BINSEARCH_KERNEL_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    return Path.home() / ".cache" / "binsearch" / "kernels.json"


class KernelChooser:
    """Measured kernel choices by code shape, batch size and table exactness.

    Args:
        cache_file: JSON file of choices measured on this machine, read at
            construction and extended after each measurement; ``None`` keeps
            them in memory only.
        preset: choices to use without measuring, ``{key: kernel}`` with keys
            as :meth:`key` makes them.
        batch_kernel: whether ``"batch"`` may be chosen at all.

    Thread-safe: threads asking for the same new shape wait for one
    measurement (two at once would time each other's contention).
    """

    def __init__(
        self,
        cache_file: str | os.PathLike[str] | None = None,
        preset: dict[tuple[Any, ...], Kernel] | None = None,
        batch_kernel: bool = True,
    ) -> None:
        self.cache_file = None if cache_file is None else Path(cache_file)
        self.batch_kernel = batch_kernel
        self.measured: dict[tuple[Any, ...], Kernel] = {}
        self._lock = threading.Lock()
        self._signature = machine_signature() if self.cache_file is not None else ""
        if self.cache_file is not None:
            self.measured.update(self._read_cache())
        self.measured.update(preset or {})
        #: While True, an unmeasured shape gets the provisional ``"popcount"`` (exact,
        #: never the slowest by much) and waits in :attr:`pending` for
        #: :meth:`measure_pending`: a server measures after /ready, not before.
        self.deferred = False
        self.pending: set[tuple[Any, ...]] = set()

    @staticmethod
    def key(shape: Shape, nq: int, exact: bool = True) -> tuple[Any, ...]:
        """The measurement key: the shape, ``1`` (single query) or ``16`` (batch), ``exact``."""
        m, planes, query_planes, weights, metric = shape
        batch = 1 if nq == 1 else 16
        return (int(m), int(planes), int(query_planes), weights, metric, batch, bool(exact))

    def known(self, shape: Shape, nq: int, exact: bool = True) -> Kernel | None:
        """The choice for this key if already measured, else None (measures nothing)."""
        return self.measured.get(self.key(shape, nq, exact))

    def choose(self, shape: Shape, nq: int, exact: bool = True, allow_sdc: bool = True) -> Kernel:
        """The fastest kernel for ``nq`` queries of ``shape``; measured on first use.

        ``exact``: query weights whose fast-scan tables are exact (e.g. ``2**-p``);
        otherwise fast-scan means quantized tables plus exact re-scoring.
        ``allow_sdc=False``: the fastest of the others (for segments that get no
        fast-scan copy); one measurement answers both.
        """
        key = self.key(shape, nq, exact)
        if not allow_sdc:
            key = (*key, "no-sdc")
        hit = self.measured.get(key)
        if hit is not None:
            return hit
        if self.deferred:
            self.pending.add(key[:7])
            return "popcount"
        with self._lock:
            if key not in self.measured:  # another thread may have measured it meanwhile
                best, best_no_sdc = measure(key[:7], self.batch_kernel)
                self.measured.setdefault(key[:7], best)
                self.measured.setdefault((*key[:7], "no-sdc"), best_no_sdc)
                self._write_cache()
        return self.measured[key]

    def measure_pending(self) -> int:
        """Stop deferring and measure every shape asked for meanwhile; how many."""
        self.deferred = False
        done = 0
        while self.pending:
            shape_key = self.pending.pop()
            self.choose(shape_key[:5], shape_key[5], shape_key[6])
            done += 1
        return done

    def _read_cache(self) -> dict[tuple[Any, ...], Kernel]:
        try:
            data = json.loads(self.cache_file.read_text())
            entries = data.get(self._signature, {})
            return {tuple(json.loads(k)): v for k, v in entries.items() if v in _KERNELS}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def _write_cache(self) -> None:
        if self.cache_file is None:
            return
        entries = {json.dumps(list(k)): v for k, v in self.measured.items()}
        try:
            update_json_file(
                self.cache_file, lambda data: data.setdefault(self._signature, {}).update(entries)
            )
        except OSError as exc:  # a read-only home must not break searching
            _log.warning("kernel choices not cached in %s: %s", self.cache_file, exc)


_KERNELS = ("popcount", "batch", "sdc")
_DEFAULT: list[KernelChooser] = []
_DEFAULT_LOCK = threading.Lock()


def default_chooser() -> KernelChooser:
    """The chooser indexes share unless given one: created on first use, disk cache on."""
    with _DEFAULT_LOCK:
        if not _DEFAULT:
            _DEFAULT.append(KernelChooser(_default_cache_file()))
        return _DEFAULT[0]


def measure(key: tuple[Any, ...], batch_kernel: bool = True) -> tuple[Kernel, Kernel]:
    """Time the candidate kernels for ``key`` (see :meth:`KernelChooser.key`).

    Returns the fastest, and the fastest other than ``"sdc"``.

    Each candidate scores one segment's worth (:data:`index.segments.SEGMENT_ROWS`)
    of random codes of the shape on one thread -- enough rows that per-call
    costs such as building a query's tables weigh as in a real scan; a batch
    of 16 queries scores that many rows over the plane pairs per row. 5
    interleaved rounds after a warm-up that compiles and builds the fast-scan
    copy; medians of CPU time (robust to other processes' load). Fast-scan
    must win by 10 %: it costs a second copy of the codes. About a second
    (plus first compilations, which numba caches on disk).
    """
    m, planes, query_planes, weights, metric, batch, exact = key
    rng = np.random.default_rng(0)
    rows = SEGMENT_ROWS if batch == 1 else SEGMENT_ROWS // (planes * query_planes)
    probe = CodeStore(m, planes, weights, metric, compaction="off")
    words = probe.n_words
    codes = rng.integers(0, 2**64, size=(rows, planes, words), dtype=np.uint64, endpoint=False)
    if m % 64:
        codes[:, :, -1] &= np.uint64((1 << (m % 64)) - 1)
    scales = None
    if weights == "per_document":  # decreasing by 3x per plane: no code has zero norm
        scales = (rng.random((rows, planes)) + 1.0) / 3.0 ** np.arange(planes)
        scales = scales.astype(np.float32)
    probe.add(codes, np.arange(rows, dtype=np.int64), scales)
    seg = probe._state.segments[0]
    queries = rng.integers(
        0, 2**64, size=(batch, query_planes, words), dtype=np.uint64, endpoint=False
    )
    qw = np.ascontiguousarray(
        np.broadcast_to(probe.default_query_weights(query_planes), (batch, query_planes))
    )
    if not exact:  # residual-like weights off the power-of-two grid
        qw = (qw * (rng.random((batch, query_planes)) + 0.5)).astype(np.float32)
    candidates: list[Kernel] = ["popcount", "sdc"]
    lone = query_planes == 1 and single_supported(words, planes)  # the 1-query vector form
    if (batch > 1 or lone) and batch_kernel and batch_supported(probe.m, planes, query_planes):
        candidates.append("batch")

    def run(kernel: Kernel) -> float:
        # CPU time of the process, not wall time: on a loaded machine waiting for a
        # core is most of a wall time and differs from run to run, the work does not.
        start = time.process_time()
        scan = dispatch.ScanQuery.codes(queries, qw, planes)
        dispatch.scan_segment(probe, seg, 10, dispatch.NO_MASK, 1, scan, kernel)
        return time.process_time() - start

    for kernel in candidates:
        run(kernel)
    times: dict[str, list[float]] = {kernel: [] for kernel in candidates}
    for _ in range(5):
        for kernel in candidates:
            times[kernel].append(run(kernel))
    medians = {kernel: float(np.median(t)) for kernel, t in times.items()}
    medians["sdc"] *= 1.1  # the second copy of the codes must pay for itself
    choice: Kernel = min(medians, key=medians.get)  # type: ignore[arg-type]
    others = {k: v for k, v in medians.items() if k != "sdc"}
    no_sdc: Kernel = min(others, key=others.get)  # type: ignore[arg-type]
    _log.info(
        "kernel for %d x %d bits, %d query planes, batch %d, %s tables: %s (%s)",
        planes,
        m,
        query_planes,
        batch,
        "exact" if exact else "quantized",
        choice,
        ", ".join(f"{k} {1e3 * v:.3f} ms" for k, v in medians.items()),
    )
    return choice, no_sdc
