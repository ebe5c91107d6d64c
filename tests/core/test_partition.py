"""Rank parts: DistributedSampler's split, as strided views of the one epoch list."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from dynams_service.core.selection import partition
from dynams_service.core.selection.partition import rank_count, rank_part
from dynams_service.protocol import pb, selection_chunks, selection_from_chunks


def reference_part(order: np.ndarray, rank: int, world: int, drop_last: bool) -> np.ndarray:
    """DistributedSampler's rule spelled out: pad by repeating the head, or drop the tail."""
    per_rank = rank_count(len(order), world, drop_last)
    padded = np.resize(order, per_rank * world) if len(order) else order[:0]
    return padded[rank::world][:per_rank]


@pytest.mark.parametrize("n", [0, 1, 5, 10, 64, 97, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 8, 64, 512])
@pytest.mark.parametrize("drop_last", [False, True])
def test_parts_follow_distributed_sampler(n, world, drop_last):
    order = np.random.default_rng(n).permutation(n).astype(np.int64)
    for rank in range(world):
        got = rank_part(order, rank, world, drop_last)
        np.testing.assert_array_equal(got, reference_part(order, rank, world, drop_last))


def test_unpadded_parts_are_views_of_the_one_list():
    """Serving every rank holds one list: an unpadded rank's part shares its memory."""
    order = np.arange(1000, dtype=np.int64)
    for rank in range(8):
        part = rank_part(order, rank, 8, drop_last=False)
        assert np.shares_memory(part, order) and part.base is not None
    padded = rank_part(np.arange(10, dtype=np.int64), 3, 4, drop_last=False)
    assert padded.tolist() == [3, 7, 1]  # the wrapped rank alone owns a (small) copy


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_a_strided_part_streams_in_contiguous_chunks(chunk):
    order = np.random.default_rng(0).permutation(1001).astype(np.int64)
    part = rank_part(order, 2, 5, drop_last=False)
    header = pb.SelectionHeader(rank_count=len(part))
    chunks = list(selection_chunks(header, part, chunk=chunk))
    assert all(len(c.indices) <= 8 * chunk for c in chunks)
    _, got, weights = selection_from_chunks(chunks)
    np.testing.assert_array_equal(got, part)
    assert weights is None


def test_docstring_examples_run():
    assert doctest.testmod(partition, raise_on_error=True).failed == 0
