"""Segments: the immutable pieces a :class:`index.flat.BinaryIndex` is made of.

An index is a tuple of segments (a :class:`State`). Each segment holds the
codes, ids, per-document scales and norms of some rows, plus a tombstone mask.
A segment *version* never changes once published: deleting rows makes a new
version with a copied mask (copy-on-write), so a search holding an old state
sees exactly the rows it started with.

The last segment may be the *tail*: its arrays are views ``[:n]`` of buffers
with spare capacity (doubling), so appending writes rows ``n..n+a`` -- which
no published version can see -- and then publishes a version with ``n + a``
rows: amortised O(1) per row. Every other segment is *sealed* (read-only,
possibly memory-mapped from a file that is never modified).
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Rows a tail grows to before it is sealed and a new tail starts.
SEGMENT_ROWS = 1 << 18
#: Smallest tail buffer, in rows.
MIN_CAPACITY = 1 << 10
#: Sealed in-memory segments kept before the smallest adjacent pair is merged.
MAX_SEGMENTS = 8

_uids = itertools.count(1)

#: A saved file: (directory, {array key: manifest entry}, {array key: (inode, size, mtime_ns)}).
SavedFiles = tuple[Path, dict[str, dict[str, Any]], dict[str, tuple[int, int, int]]]


class Core:
    """The arrays and caches shared by every version of one segment.

    ``codes`` uint64 ``(cap, P, W)``, ``ids`` int64 ``(cap,)``, ``scales``
    float32 ``(cap, P)`` or ``(0, P)``, ``norms`` float32 ``(cap,)`` or ``(0,)``:
    for a sealed segment ``cap`` is its row count; for the tail, its capacity.
    """

    __slots__ = (
        "codes",
        "ids",
        "scales",
        "norms",
        "sealed",
        "mapped",
        "uid",
        "files",
        "tail_rows",
        "_order",
    )

    def __init__(
        self,
        codes: np.ndarray,
        ids: np.ndarray,
        scales: np.ndarray,
        norms: np.ndarray,
        sealed: bool,
        mapped: bool = False,
    ) -> None:
        self.codes, self.ids, self.scales, self.norms = codes, ids, scales, norms
        self.sealed, self.mapped = sealed, mapped
        self.uid = next(_uids)
        # Where this segment's arrays already lie on disk (set by save / load).
        self.files: SavedFiles | None = None
        # Tail only: id -> latest row (a re-added id's older rows are all dead).
        self.tail_rows: dict[int, int] | None = None if sealed else {}
        self._order: np.ndarray | None = None  # sealed only: stable argsort of ids

    def __deepcopy__(self, memo: dict) -> Core:
        out = Core.__new__(Core)
        memo[id(self)] = out
        for name in ("codes", "ids", "scales", "norms"):
            setattr(out, name, np.array(getattr(self, name), copy=True))
        out.sealed, out.mapped, out.uid = self.sealed, False, next(_uids)
        out.files, out._order = self.files, self._order
        out.tail_rows = None if self.tail_rows is None else dict(self.tail_rows)
        return out

    def sorted_order(self) -> np.ndarray | None:
        """Stable argsort of a sealed segment's ids, computed once; None when already sorted."""
        if self._order is None:
            ids = self.ids
            if ids.shape[0] < 2 or bool(np.all(ids[1:] > ids[:-1])):
                self._order = np.empty(0, dtype=np.int64)  # ascending: no sorter needed
            else:
                self._order = np.argsort(ids, kind="stable")
        return self._order if self._order.shape[0] else None


class Segment:
    """One published version of a segment: ``n`` rows of ``core`` and their tombstones.

    ``alive`` is uint8 ``(n,)`` (0 = deleted) or None when no row is deleted;
    ``alive_buf`` is the buffer it views (longer for the tail).
    """

    __slots__ = ("core", "n", "alive", "alive_buf", "n_dead", "codes", "ids", "scales", "norms")

    def __init__(
        self, core: Core, n: int, alive_buf: np.ndarray | None = None, n_dead: int = 0
    ) -> None:
        self.core, self.n, self.n_dead = core, int(n), int(n_dead)
        self.alive_buf = alive_buf
        self.alive = None if alive_buf is None else alive_buf[:n]
        self.codes = core.codes[:n]
        self.ids = core.ids[:n]
        self.scales = core.scales[:n]
        self.norms = core.norms[:n]

    def __deepcopy__(self, memo: dict) -> Segment:
        core = copy.deepcopy(self.core, memo)
        alive_buf = None if self.alive_buf is None else self.alive_buf.copy()
        return Segment(core, self.n, alive_buf, self.n_dead)

    @property
    def n_live(self) -> int:
        return self.n - self.n_dead

    def live_rows(self) -> np.ndarray:
        """int64 rows that are not tombstoned, ascending."""
        if self.alive is None:
            return np.arange(self.n, dtype=np.int64)
        return np.flatnonzero(self.alive)

    def live(self, array: np.ndarray) -> np.ndarray:
        """``array`` (one of this segment's per-row arrays) without tombstoned rows."""
        if self.alive is None or array.shape[0] != self.n:
            return array
        return array[self.alive.view(bool)]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Live rows of ``ids`` (int64, ``-1`` where absent or deleted)."""
        if self.core.tail_rows is not None:
            get = self.core.tail_rows.get
            rows = np.fromiter((get(i, -1) for i in ids.tolist()), np.int64, ids.shape[0])
            rows[rows >= self.n] = -1
        else:
            stored = self.ids
            if not self.n:
                return np.full(ids.shape[0], -1, dtype=np.int64)
            order = self.core.sorted_order()
            # side="right" - 1: of equal ids the latest row, the only one that may be live.
            pos = np.searchsorted(stored, ids, side="right", sorter=order) - 1
            pos = np.maximum(pos, 0)
            rows = pos if order is None else order[pos]
            rows = np.where(stored[rows] == ids, rows, -1)
        if self.alive is not None:
            found = rows >= 0
            rows[found & (self.alive[np.maximum(rows, 0)] == 0)] = -1
        return rows

    def with_dead(self, rows: np.ndarray) -> Segment:
        """A new version with live ``rows`` tombstoned (the mask is copied, never mutated)."""
        if self.alive_buf is None:
            buf = np.ones(self.core.codes.shape[0], dtype=np.uint8)
        else:
            buf = self.alive_buf.copy()
        buf[rows] = 0
        return Segment(self.core, self.n, buf, self.n_dead + int(rows.shape[0]))

    def sealed(self) -> Segment:
        """This tail as a sealed segment (views of the same buffers, no copy)."""
        if self.core.sealed:
            return self
        core = Core(self.codes, self.ids, self.scales, self.norms, sealed=True)
        alive = None if self.alive is None else self.alive
        return Segment(core, self.n, alive, self.n_dead)


def sealed_segment(
    codes: np.ndarray,
    ids: np.ndarray,
    scales: np.ndarray,
    norms: np.ndarray,
    alive: np.ndarray | None = None,
    mapped: bool = False,
) -> Segment:
    """A sealed segment over the given arrays (not copied)."""
    n_dead = 0 if alive is None else int(alive.shape[0] - np.count_nonzero(alive))
    if alive is not None and n_dead == 0:
        alive = None
    return Segment(
        Core(codes, ids, scales, norms, sealed=True, mapped=mapped), ids.shape[0], alive, n_dead
    )


def merge_segments(segments: list[Segment]) -> tuple[Segment, list[tuple[int, np.ndarray]]]:
    """The live rows of ``segments`` as one sealed segment, in order.

    Returns the segment and, per input, ``(offset, live rows)``: input row
    ``live_rows[t]`` became row ``offset + t`` of the merged segment.
    """
    parts, offset = [], 0
    for seg in segments:
        rows = seg.live_rows()
        parts.append((offset, rows))
        offset += rows.shape[0]

    def gather(name: str) -> np.ndarray:
        arrays = [getattr(seg, name) for seg in segments]
        if arrays[0].shape[0] != segments[0].n:  # an array this index does not store
            return np.array(arrays[0][:0], copy=True)
        return np.concatenate([seg.live(a) for seg, a in zip(segments, arrays, strict=True)])

    merged = sealed_segment(gather("codes"), gather("ids"), gather("scales"), gather("norms"))
    return merged, parts


@dataclass(eq=False)
class State:
    """An immutable tuple of segment versions: what one search reads from start to end."""

    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        self.n_rows = sum(seg.n for seg in self.segments)
        self.n_dead = sum(seg.n_dead for seg in self.segments)
        self.cache: dict[str, np.ndarray] = {}

    @property
    def n_live(self) -> int:
        return self.n_rows - self.n_dead

    def __reduce__(self) -> tuple:
        # pickle and deepcopy: the segments only, not the cached concatenations
        return State, (self.segments,)


def file_stat(path: Path) -> tuple[int, int, int]:
    """``(inode, size, mtime_ns)``: tells a file we wrote from one written over it since."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------------------
# Edits of a list of segments (the writer's next state; the caller holds its lock).


def append_rows(
    segments: list[Segment],
    rows: dict[str, np.ndarray | None],
    new_core: Callable[[int], Core],
    empty: dict[str, np.ndarray],
    may_merge: bool = True,
) -> None:
    """Append ``rows`` (``codes``, ``ids``, ``scales``, ``norms``; None = not stored) in place.

    Rows go to the tail (grown by doubling, sealed once it would pass
    :data:`SEGMENT_ROWS`); a batch of at least :data:`SEGMENT_ROWS` rows becomes
    a sealed segment of its own. ``new_core(capacity)`` makes an empty tail
    buffer, ``empty`` holds zero-row arrays for what the index does not store.
    ``may_merge``: whether sealing may merge small segments (not while a
    compaction builds from a snapshot).
    """
    a = rows["ids"].shape[0]
    tail = segments[-1] if segments and not segments[-1].core.sealed else None
    if a >= SEGMENT_ROWS:  # a big batch is a segment of its own
        if tail is not None:
            segments[-1] = tail.sealed()
        arrays = {k: np.array(v, copy=True) for k, v in rows.items() if v is not None}
        arrays = {**empty, **arrays}
        segments.append(
            sealed_segment(arrays["codes"], arrays["ids"], arrays["scales"], arrays["norms"])
        )
        if may_merge:
            merge_small(segments)
        return
    if tail is not None and tail.n + a > SEGMENT_ROWS:
        segments[-1] = tail.sealed()
        if may_merge:
            merge_small(segments)
        tail = None
    if tail is None:
        tail = Segment(new_core(max(MIN_CAPACITY, pow2(a))), 0)
        segments.append(tail)
    n, core = tail.n, tail.core
    alive_buf = tail.alive_buf
    if n + a > core.codes.shape[0]:  # grow: copy into a buffer twice as large
        grown = new_core(max(2 * core.codes.shape[0], pow2(n + a)))
        for name in ("codes", "ids", "scales", "norms"):
            if getattr(core, name).shape[0]:
                getattr(grown, name)[:n] = getattr(core, name)[:n]
        grown.tail_rows = core.tail_rows
        if alive_buf is not None:
            alive_buf = np.concatenate(
                [alive_buf[:n], np.ones(grown.codes.shape[0] - n, dtype=np.uint8)]
            )
        core = grown
    # Rows n..n+a are beyond every published view of this buffer: invisible until published.
    for name, values in rows.items():
        if values is not None:
            getattr(core, name)[n : n + a] = values
    if alive_buf is not None:
        alive_buf[n : n + a] = 1
    core.tail_rows.update(zip(rows["ids"].tolist(), range(n, n + a), strict=True))
    segments[-1] = Segment(core, n + a, alive_buf, tail.n_dead)


#: Memory-mapped segments smaller than this may be merged (copied into memory).
MERGE_MAPPED_ROWS = 1 << 16


def merge_small(segments: list[Segment]) -> None:
    """Keep at most :data:`MAX_SEGMENTS` in-memory sealed segments: merge the smallest pairs."""
    while True:
        # Large memory-mapped segments are never merged here: that would copy them
        # into memory. Small ones (one snapshot's writes, reopened) are, or every
        # restart + snapshot would leave one more segment to scan.
        small = [
            i
            for i, seg in enumerate(segments)
            if seg.core.sealed and (not seg.core.mapped or seg.n < MERGE_MAPPED_ROWS)
        ]
        pairs = [(segments[i].n + segments[i + 1].n, i) for i in small if i + 1 in small]
        if len(small) <= MAX_SEGMENTS or not pairs:
            return
        _, i = min(pairs)
        segments[i : i + 2] = [merge_segments(segments[i : i + 2])[0]]


def tombstone(segments: list[Segment], ids: np.ndarray) -> int:
    """Tombstone the live rows of ``ids`` (unique) in ``segments``, in place; how many."""
    removed = 0
    for s, seg in enumerate(segments):
        if seg.n_live:
            rows = seg.rows_of(ids)
            hit = rows[rows >= 0]
            if hit.shape[0]:
                segments[s] = seg.with_dead(hit)
                removed += int(hit.shape[0])
    return removed


def pow2(n: int) -> int:
    """The smallest power of two ``>= n``."""
    return 1 << max(0, int(n) - 1).bit_length()


#: One compaction's work: groups of segment positions, and per group the merged
#: segment with its ``(offset, live rows)`` parts, or None to keep the segment as is.
Compaction = tuple[list[list[int]], list[tuple[Segment, list[tuple[int, np.ndarray]]] | None]]


def build_compaction(snapshot: tuple[Segment, ...]) -> Compaction | None:
    """Merge ``snapshot``'s segments without their tombstones; None when nothing would change.

    All segments become one -- except a memory-mapped first segment without
    tombstones, which stays (rewriting it would copy it into memory for nothing).
    Runs without any lock: the snapshot never changes.
    """
    if not snapshot:
        return None
    if snapshot[0].core.mapped and snapshot[0].n_dead == 0 and len(snapshot) > 1:
        groups = [[0], list(range(1, len(snapshot)))]
    else:
        groups = [list(range(len(snapshot)))]
    built: list[tuple[Segment, list[tuple[int, np.ndarray]]] | None] = []
    for group in groups:
        if len(group) == 1 and snapshot[group[0]].n_dead == 0:
            built.append(None)  # nothing to gain: keep the segment as it is
        else:
            built.append(merge_segments([snapshot[i] for i in group]))
    if all(b is None for b in built):
        return None
    return groups, built


def finish_compaction(
    current: tuple[Segment, ...], snapshot: tuple[Segment, ...], work: Compaction
) -> tuple[tuple[Segment, ...], int] | None:
    """The segments that replace ``current`` once ``work`` (built from ``snapshot``) is done.

    Deletes made since the snapshot are tombstoned again in the merged
    segments; segments appended since are kept after them. Returns the new
    segments and the rows reclaimed, or None if ``current`` no longer starts
    with the snapshot's segments. The caller holds the writer lock.
    """
    if len(current) < len(snapshot) or any(
        current[i].core is not snapshot[i].core for i in range(len(snapshot))
    ):  # pragma: no cover - writers do not merge while a compaction runs
        return None
    groups, built = work
    out, reclaimed = [], 0
    for group, result in zip(groups, built, strict=True):
        if result is None:
            out.append(current[group[0]])
            continue
        merged, parts = result
        died = [
            offset + np.flatnonzero(current[i].alive[rows] == 0)
            for i, (offset, rows) in zip(group, parts, strict=True)
            if current[i].alive is not snapshot[i].alive
        ]
        died = [d for d in died if d.shape[0]]
        if died:
            merged = merged.with_dead(np.concatenate(died))
        out.append(merged)
        reclaimed += sum(snapshot[i].n_dead for i in group)
    return tuple(out) + tuple(current[len(snapshot) :]), reclaimed
