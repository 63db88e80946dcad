"""The code format: bit layout by hand, pack/unpack round trips, code values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from index import code_values, fixed_plane_weights, pack_codes, unpack_codes, words_per_plane
from index.faiss_interop import bytes_to_codes, codes_to_bytes


def test_hand_worked_bit_layout():
    # m = 70: dimension j is bit j % 64 of word j // 64, LSB first; set bit = +1.
    signs = -np.ones((1, 2, 70), dtype=np.int8)
    signs[0, 0, [0, 3, 63]] = 1  # word 0: 1 + 8 + 2**63
    signs[0, 0, 64] = 1  # word 1, bit 0
    signs[0, 1, 69] = 1  # plane 1, word 1, bit 5
    words = pack_codes(signs)
    assert words.dtype == np.uint64 and words.shape == (1, 2, 2)
    assert words[0, 0].tolist() == [1 + 8 + 2**63, 1]
    assert words[0, 1].tolist() == [0, 32]


def test_hand_worked_values():
    # v_j = sum_p w_p * sign_pj with w = [1, 1/2]: (+,+) -> 1.5, (+,-) -> 0.5, (-,+) -> -0.5.
    signs = np.array([[[1, 1, -1], [1, -1, 1]]])
    values = code_values(pack_codes(signs), 3, fixed_plane_weights(2))
    np.testing.assert_array_equal(values, [[1.5, 0.5, -0.5]])
    per_doc = code_values(pack_codes(signs), 3, np.array([[2.0, 0.25]]))
    np.testing.assert_array_equal(per_doc, [[2.25, 1.75, -1.75]])


def test_words_per_plane():
    assert [words_per_plane(m) for m in (1, 64, 65, 128, 384)] == [1, 1, 2, 2, 6]


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.int8,
        st.tuples(st.integers(0, 5), st.integers(1, 4), st.integers(1, 200)),
        elements=st.sampled_from([-1, 1]),
    )
)
def test_pack_unpack_round_trip(signs):
    words = pack_codes(signs)
    m = signs.shape[2]
    assert words.shape == (*signs.shape[:2], words_per_plane(m))
    np.testing.assert_array_equal(unpack_codes(words, m), signs)
    # padding bits past m stay clear, so popcounts over whole words are exact
    pad = words_per_plane(m) * 64 - m
    if pad and words.size:
        assert not np.any(words[..., -1] >> np.uint64(64 - pad))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 6), st.sampled_from([8, 16, 64, 72, 256]), st.integers(0, 2**32 - 1))
def test_faiss_byte_layout_round_trip(n, m, seed):
    signs = np.random.default_rng(seed).choice([-1, 1], size=(n, 1, m))
    words = pack_codes(signs)
    as_bytes = codes_to_bytes(words, m)
    assert as_bytes.shape == (n, m // 8)
    # faiss: dimension j is bit j % 8 of byte j // 8
    bits = (as_bytes[:, np.arange(m) // 8] >> (np.arange(m) % 8).astype(np.uint8)) & 1
    np.testing.assert_array_equal(bits, signs[:, 0] > 0)
    np.testing.assert_array_equal(bytes_to_codes(as_bytes, m), words)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        pack_codes(np.ones((3, 4)))
    with pytest.raises(ValueError, match="words per plane"):
        unpack_codes(np.zeros((1, 1, 2), dtype=np.uint64), 64)
    with pytest.raises(ValueError):
        codes_to_bytes(np.zeros((1, 2, 1), dtype=np.uint64), 64)
