"""Exhaustive scan index over packed binary codes (numpy + numba only, no torch).

:class:`BinaryIndex` is the index object (:mod:`index.flat`); :mod:`index.durable`
has the one fsync-then-rename writer (:func:`atomic_write`, :func:`fsync_dir`)
that everything durable in binsearch uses.
"""

from index.codes import (
    byte_tables,
    code_values,
    fixed_plane_weights,
    pack_codes,
    quantize_query,
    unpack_codes,
    words_per_plane,
)
from index.durable import atomic_write, check_file, file_crc32, fsync_dir
from index.faiss_interop import bytes_to_codes, codes_to_bytes
from index.flat import INDEX_FORMAT_VERSION, BinaryIndex, IndexFormatError, Method, read_manifest
from index.impl.kernel_choice import KernelChooser, default_chooser
from index.impl.topk import merge_topk, topk

__all__ = [
    "INDEX_FORMAT_VERSION",
    "BinaryIndex",
    "IndexFormatError",
    "KernelChooser",
    "Method",
    "atomic_write",
    "byte_tables",
    "bytes_to_codes",
    "check_file",
    "code_values",
    "codes_to_bytes",
    "default_chooser",
    "file_crc32",
    "fixed_plane_weights",
    "fsync_dir",
    "merge_topk",
    "pack_codes",
    "quantize_query",
    "read_manifest",
    "topk",
    "unpack_codes",
    "words_per_plane",
]
