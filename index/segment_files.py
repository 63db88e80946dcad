"""An index directory on disk: the manifest and each segment's immutable array files.

Layout (format version 3)::

    manifest.json              format, version, generation, shape, segments, files
    codes.<g>-<s>.npy          segment s's codes, written in generation g
    ids.<g>-<s>.npy            ... and ids, scales, norms as the index stores them
    alive.<g>-<s>.npy          packed tombstone mask, only for segments with deletes

Every file goes through :func:`index.durable.atomic_write`; the manifest,
holding each file's size and CRC-32, is replaced last. Its rename is the
commit: a crash before it leaves the previous index loadable, a crash after it
the new one. A segment already saved in the directory (same files, unchanged on
disk) is not written again, so a save after a few adds writes only new rows.
Versions 1 (fixed file names, no checksums) and 2 (one checksummed generation)
are still read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from index.durable import IndexFormatError, atomic_write, check_file, fsync_dir
from index.segments import Core, SavedFiles, Segment, file_stat, sealed_segment

FORMAT_NAME = "binsearch-index"
INDEX_FORMAT_VERSION = 3
#: Versions the loader reads: 1 (no checksums, fixed file names), 2 (one generation
#: of checksummed files) and 3 (segments, each its own immutable files).
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
# Array files of every format version: v1 "codes.npy", v2 "codes.7.npy", v3 "codes.7-2.npy".
ARRAY_FILE = re.compile(r"(codes|ids|scales|norms|alive)(\.\d+(-\d+)?)?\.npy")

_DTYPES = {"codes": np.uint64, "ids": np.int64, "norms": np.float32, "scales": np.float32}


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an index directory, checked for format and version."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise IndexFormatError(f"{path} is not an index directory (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{file}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{file}: not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise IndexFormatError(
            f"{path}: index format version {version}, this binsearch reads versions "
            f"{list(READABLE_VERSIONS)}; rebuild the index with `binsearch index`"
        )
    return manifest


def write_segments(
    path: Path, segments: list[Segment], names: list[str], header: dict[str, Any]
) -> None:
    """Write sealed ``segments`` and a manifest into directory ``path`` (which exists).

    Args:
        path: the index directory.
        segments: sealed segments, in order.
        names: the arrays each segment stores (``codes``, ``ids``, maybe
            ``scales`` and ``norms``).
        header: the manifest's other fields (shape, weights, metric, meta, ...).

    Segments whose files are already in ``path`` unchanged are referenced, not
    rewritten; files no manifest refers to any more are deleted after the commit.
    """
    where = path.resolve()
    generation = _next_generation(path)
    files: dict[str, dict[str, Any]] = {}
    written: list[tuple[Core, SavedFiles]] = []
    entries = []
    for s, seg in enumerate(segments):
        suffix = "" if s == 0 else f".{s}"
        saved = _reusable_files(seg.core, where)
        if saved is None:
            saved_entries, stats = {}, {}
            for name in names:
                file = f"{name}.{generation}-{s}.npy"
                array = getattr(seg, name)
                size, crc = atomic_write(path / file, lambda f, a=array: np.save(f, a))
                saved_entries[name] = {"file": file, "bytes": size, "crc32": crc}
                stats[name] = file_stat(path / file)
            saved = (where, saved_entries, stats)
            written.append((seg.core, saved))
        for name in names:
            files[name + suffix] = saved[1][name]
        if seg.n_dead:
            file = f"alive.{generation}-{s}.npy"
            packed = np.packbits(seg.alive.view(bool))
            size, crc = atomic_write(path / file, lambda f, a=packed: np.save(f, a))
            files["alive" + suffix] = {"file": file, "bytes": size, "crc32": crc}
        entries.append({"rows": seg.n, "dead": seg.n_dead})
    manifest = {
        "format": FORMAT_NAME,
        "format_version": INDEX_FORMAT_VERSION,
        "generation": generation,
        **header,
        "count": sum(seg.n_live for seg in segments),
        "arrays": sorted(names),
        "segments": entries,
        "files": files,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(path / MANIFEST, lambda f: f.write(text.encode()))
    fsync_dir(path)
    for core, saved in written:  # only now are these files part of a committed index
        core.files = saved
    current = {entry["file"] for entry in files.values()}
    for file in path.iterdir():
        if ARRAY_FILE.fullmatch(file.name) and file.name not in current:
            file.unlink(missing_ok=True)


def read_segments(
    path: Path,
    manifest: dict[str, Any],
    names: list[str],
    planes: int,
    n_words: int,
    empty: dict[str, np.ndarray],
    mmap: bool,
    verify: bool,
) -> list[Segment]:
    """The sealed segments of index directory ``path`` as ``manifest`` lists them.

    Args:
        names: the arrays the index stores (must equal the manifest's list).
        planes, n_words: the code shape ``(planes, n_words)`` per row.
        empty: zero-row arrays standing in for those the index does not store.
        mmap: map the files copy-on-write instead of reading them.
        verify: check each file's CRC-32 (sizes are always checked).
    """
    try:
        count = int(manifest["count"])
        version = manifest["format_version"]
        if version >= 3:
            layout = [(int(e["rows"]), int(e["dead"])) for e in manifest["segments"]]
        else:
            layout = [(count, 0)]
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{path}: invalid manifest ({exc})") from exc
    if set(manifest.get("arrays", [])) != set(names):
        raise IndexFormatError(f"{path}: manifest lists arrays {manifest.get('arrays')}")
    if sum(n - dead for n, dead in layout) != count:
        raise IndexFormatError(
            f"{path}: segments hold {sum(n - d for n, d in layout)} live rows, "
            f"manifest says count {count}"
        )
    where = path.resolve()
    segments = []
    for s, (n, dead) in enumerate(layout):
        suffix = "" if s == 0 else f".{s}"
        shapes = {"codes": (n, planes, n_words), "ids": (n,), "norms": (n,), "scales": (n, planes)}
        arrays = dict(empty)
        entries, stats = {}, {}
        for name in sorted(names):
            arrays[name] = _load_array(
                path, manifest, name + suffix, name, shapes[name], _DTYPES[name], mmap, verify
            )
            if version >= 2:
                entries[name] = manifest["files"][name + suffix]
                stats[name] = file_stat(path / entries[name]["file"])
        alive = None
        if dead:
            packed = _load_array(
                path, manifest, "alive" + suffix, "alive", ((n + 7) // 8,), np.uint8, False, verify
            )
            alive = np.unpackbits(packed, count=n).astype(np.uint8)
            if n - int(np.count_nonzero(alive)) != dead:
                raise IndexFormatError(f"{path}: segment {s} tombstones disagree with manifest")
        seg = sealed_segment(
            arrays["codes"], arrays["ids"], arrays["scales"], arrays["norms"], alive, mmap
        )
        if version >= 2:
            seg.core.files = (where, entries, stats)
        segments.append(seg)
    return segments


def _reusable_files(core: Core, where: Path) -> SavedFiles | None:
    """The files ``core`` was saved to in directory ``where``, if still there unchanged."""
    saved = core.files
    if saved is None or saved[0] != where:
        return None
    try:
        for name, stat in saved[2].items():
            if file_stat(where / saved[1][name]["file"]) != stat:
                return None
    except OSError:
        return None
    return saved


def _load_array(
    path: Path,
    manifest: dict[str, Any],
    key: str,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    mmap: bool,
    verify: bool,
) -> np.ndarray:
    """One array file of an index directory, checked against the manifest."""
    version = manifest["format_version"]
    entry = manifest.get("files", {}).get(key) if version >= 2 else None
    if version >= 2 and not isinstance(entry, dict):
        raise IndexFormatError(f"{path}: manifest has no file entry for {key}")
    name_on_disk = str(entry["file"]) if entry else f"{name}.npy"
    if Path(name_on_disk).name != name_on_disk:
        raise IndexFormatError(f"{path}: manifest names a file outside the index: {name_on_disk}")
    file = path / name_on_disk
    if entry:
        check_file(file, entry, verify)
    try:
        array = np.load(file, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: cannot read {file.name} ({exc})") from exc
    if array.shape != shape or array.dtype != dtype:
        raise IndexFormatError(
            f"{path}: {file.name} holds {array.dtype} {array.shape}, "
            f"manifest says {np.dtype(dtype)} {shape}"
        )
    # np.asarray drops the memmap subclass (numba types plain arrays) but keeps
    # the mapping; "c" keeps it writeable, so kernels compile once.
    return np.asarray(array)


def _next_generation(path: Path) -> int:
    try:
        manifest = read_manifest(path)
        return int(manifest.get("generation", 0)) + 1
    except (IndexFormatError, TypeError, ValueError):
        return 1
