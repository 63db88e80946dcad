"""Exhaustive scan index over packed binary codes (numpy + numba only, no torch)."""

from index.codes import (
    byte_tables,
    code_values,
    fixed_plane_weights,
    pack_codes,
    quantize_query,
    unpack_codes,
    words_per_plane,
)
from index.flat import FORMAT_VERSION, BinaryIndex, IndexFormatError, read_manifest
from index.topk import merge_topk, topk

__all__ = [
    "FORMAT_VERSION",
    "BinaryIndex",
    "byte_tables",
    "IndexFormatError",
    "code_values",
    "fixed_plane_weights",
    "merge_topk",
    "pack_codes",
    "quantize_query",
    "read_manifest",
    "topk",
    "unpack_codes",
    "words_per_plane",
]
