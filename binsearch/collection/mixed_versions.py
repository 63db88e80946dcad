"""A mixed-version index: segments of codes written by several compatible binarizer versions.

When the encoder changes, documents already coded by the old binarizer stay as
they are; new documents are coded by the new (compatibly trained) binarizer
into a new segment. A search codes the query once with the newest model and
scans every segment whose binarizer version that model is compatible with,
then merges the per-segment top-k lists (:func:`index.merge_topk`).

Layout of a segmented index directory::

    segments.json                 {"format", "format_version", "segments": [{"dir", "version"}]}
    seg-000/ seg-001/ ...         ordinary index directories (manifest meta holds the codec,
                                  with its binarizer inline)

Scores of different segments are cosines in one code space, so they merge as
they are. A segment from a version the query model does not list is refused
with :class:`IncompatibleSegmentError`, never silently mis-scored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.codes.codecs import RbeCodec, codec_from_config
from binsearch.collection.coded_index import CodedIndex
from index import BinaryIndex, atomic_write, fsync_dir, merge_topk

SEGMENTS_FILE = "segments.json"
SEGMENTS_FORMAT = "binsearch-segments"
SEGMENTS_VERSION = 1


class IncompatibleSegmentError(ValueError):
    """Codes written by a binarizer version the query model cannot score."""


class MixedVersionIndex:
    """Segments of ``rbe`` codes, each tagged with its binarizer version.

    Use :meth:`add_segment` to write documents with a given codec, :meth:`search`
    to rank all segments for queries coded by one (the newest) codec.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.segments: list[dict[str, Any]] = []
        self._indexes: list[BinaryIndex] = []

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> MixedVersionIndex:
        """Read a segmented index directory (all segments are loaded)."""
        self = cls(path)
        file = self.path / SEGMENTS_FILE
        if not file.is_file():
            raise IncompatibleSegmentError(f"{path}: not a segmented index (no {SEGMENTS_FILE})")
        data = json.loads(file.read_text())
        if data.get("format") != SEGMENTS_FORMAT or data.get("format_version") != SEGMENTS_VERSION:
            raise IncompatibleSegmentError(
                f"{file}: not a {SEGMENTS_FORMAT} v{SEGMENTS_VERSION} file"
            )
        self.segments = list(data["segments"])
        self._indexes = [BinaryIndex.load(self.path / s["dir"]) for s in self.segments]
        return self

    def __len__(self) -> int:
        return sum(len(i) for i in self._indexes)

    def add_segment(self, codec: RbeCodec, embeddings: np.ndarray, ids: np.ndarray) -> str:
        """Code float32 ``(n, codec.dim)`` embeddings with ``ids`` (int64 ``(n,)``) as a new segment.

        Returns the segment's directory name. The segment list is rewritten
        after the segment is complete, so a crash leaves the old list valid.
        """
        if not isinstance(codec, RbeCodec) or not codec.model.version:
            raise IncompatibleSegmentError("segments need a trained rbe codec (it has a version)")
        ids = np.asarray(ids, dtype=np.int64)
        for existing in self._indexes:
            if existing.contains(ids).any():
                raise ValueError("some ids are already in another segment")
        name = f"seg-{len(self.segments):03d}"
        meta = {"codec": codec.config(), "binarizer_version": codec.model.version}
        index = CodedIndex.from_embeddings(embeddings, codec, keys=ids, meta=meta).index
        index.save(self.path / name)
        self.segments.append({"dir": name, "version": codec.model.version})
        self._indexes.append(index)
        self._write()
        return name

    def check_compatible(self, codec: RbeCodec) -> None:
        """Raise :class:`IncompatibleSegmentError` unless ``codec`` can score every segment."""
        known = {codec.model.version, *codec.model.compatible_with}
        for seg in self.segments:
            if seg["version"] not in known:
                raise IncompatibleSegmentError(
                    f"segment {seg['dir']} holds codes of binarizer version {seg['version']}, "
                    f"which the query binarizer (version {codec.model.version}) is not compatible "
                    "with; train it with --old on that version or re-code the segment"
                )

    def search(self, codec: RbeCodec, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores float32 (nq, k'), ids int64 (nq, k'))`` over all segments.

        ``queries`` are float32 ``(nq, codec.model.query_dim)`` from the query
        model's encoder.
        """
        self.check_compatible(codec)
        if not self._indexes:
            raise ValueError("the index has no segments")
        # Each segment's codes scored by the query codec's codes: true cosines, so the
        # segments' lists merge.
        per_segment = [CodedIndex(codec, index).topk(queries, k) for index in self._indexes]
        out_s, out_i = [], []
        for row in range(len(queries)):
            s, i = merge_topk([p[0][row] for p in per_segment], [p[1][row] for p in per_segment], k)
            out_s.append(s)
            out_i.append(i)
        return np.stack(out_s), np.stack(out_i)

    def segment_codec(self, position: int) -> RbeCodec:
        """The codec (with its binarizer) that wrote segment ``position``."""
        codec = codec_from_config(self._indexes[position].meta["codec"])
        if not isinstance(codec, RbeCodec):
            raise IncompatibleSegmentError(f"segment {position} was not written by an rbe codec")
        return codec

    def _write(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        body = {
            "format": SEGMENTS_FORMAT,
            "format_version": SEGMENTS_VERSION,
            "segments": self.segments,
        }
        text = json.dumps(body, indent=2) + "\n"
        atomic_write(self.path / SEGMENTS_FILE, lambda f: f.write(text.encode()))
        fsync_dir(self.path)
