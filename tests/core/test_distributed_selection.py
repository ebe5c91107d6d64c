"""Distributed k-selection equals select() on the concatenation, with bounded summaries.

Parts are simulated in one process; a ``RemoteLikePart`` wrapper sends every request and
reply through pickle (as Ray would), answers with deferred calls resolved one at a time,
and records what the head received, so the tests can check the head's bounds too.
"""

from __future__ import annotations

import doctest
import pickle
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynams_service.core.selection import distributed_selection as ds
from dynams_service.core.selection.distributed_selection import (
    DEFAULT_BINS,
    SelectionPart,
    distributed_select,
    max_passes,
)
from dynams_service.core.selection.selection import budget, select

INF = float("inf")
# Few distinct values, with ±inf, signed zeros and the extremes of each float width.
SPECIAL = {
    np.float64: [-INF, INF, 0.0, -0.0, 1.0, -1.0, 0.5, 5e-324, -5e-324, 1.7e308, -1.7e308],
    np.float32: [-INF, INF, 0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, -1e-45, 3.4e38, -3.4e38],
}


@dataclass
class RemoteLikePart:
    """A part behind pickled messages and deferred answers; records the replies' sizes."""

    part: SelectionPart
    histogram_shapes: list = field(default_factory=list)
    gathered_per_query: list = field(default_factory=list)

    def _call(self, method, argument):
        def deferred():
            reply = getattr(self.part, method)(pickle.loads(pickle.dumps(argument)))
            return pickle.loads(pickle.dumps(reply))
        return deferred

    def census(self, per_class):
        return self._call("census", per_class)

    def summary(self, query):
        call = self._call("summary", query)

        def recorded():
            reply = call()
            self.histogram_shapes.append(reply.histograms.shape)
            self.gathered_per_query.append(
                np.bincount(reply.gathered_query, minlength=query.group.size))
            return reply
        return recorded

    def take(self, thresholds):
        return self._call("take", thresholds)


def resolve_one_at_a_time(deferred):
    return (call() for call in deferred)


def make_parts(margins, indices, labels, owner, num_parts, order=None):
    """Split items over ``num_parts`` parts by ``owner``, each part in ``order``'s order."""
    order = np.arange(len(margins)) if order is None else np.asarray(order, dtype=np.int64)
    parts = []
    for p in range(num_parts):
        mine = order[owner[order] == p]
        parts.append(SelectionPart(margins[mine], indices[mine], labels[mine]))
    return parts


def reference(margins, indices, labels, *, k=None, ratio=None, per_class=False):
    """select() on the concatenation in dataset-index order, mapped back to dataset indices."""
    n = len(margins)
    if k is not None:
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        ratio = k / n
        assert budget(n, ratio) == k
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    by_index = np.argsort(indices, kind="stable")
    chosen = select(margins[by_index], labels[by_index], ratio=ratio, per_class=per_class)
    return indices[by_index][np.asarray(chosen)]


@st.composite
def rounds(draw):
    n = draw(st.integers(0, 80))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    width = 32 if dtype is np.float32 else 64
    distinct = draw(st.one_of(
        st.lists(st.sampled_from(SPECIAL[dtype]), min_size=1, max_size=4),
        st.lists(st.floats(allow_nan=False, width=width), min_size=1, max_size=n + 1),
    ))
    margins = np.array(draw(st.lists(st.sampled_from(distinct), min_size=n, max_size=n)),
                       dtype=dtype)
    classes = sorted(draw(st.sets(st.integers(0, 1000), min_size=1, max_size=6)))
    labels = np.array(draw(st.lists(st.sampled_from(classes), min_size=n, max_size=n)),
                      dtype=np.int64)
    if draw(st.booleans()):
        indices = np.arange(n, dtype=np.int64)
    else:
        indices = np.array(sorted(draw(st.sets(st.integers(0, 2**63 - 1), min_size=n,
                                               max_size=n))), dtype=np.int64)
    num_parts = draw(st.integers(1, 8))
    owner = np.array(draw(st.lists(st.integers(0, num_parts - 1), min_size=n, max_size=n)),
                     dtype=np.int64)
    order = draw(st.permutations(range(n)))
    if draw(st.booleans()):
        budget_kw = {"k": draw(st.integers(0, n))}
    else:
        budget_kw = {"ratio": draw(st.floats(0, 1, exclude_min=True))}
    return dict(margins=margins, labels=labels, indices=indices, owner=owner,
                num_parts=num_parts, order=order, budget_kw=budget_kw,
                per_class=draw(st.booleans()),
                bins=draw(st.sampled_from([2, 3, 7, 16, DEFAULT_BINS])),
                gather_limit=draw(st.sampled_from([None, 0, 1, 3])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_equals_select_on_concatenation(r):
    parts = make_parts(r["margins"], r["indices"], r["labels"], r["owner"], r["num_parts"],
                       r["order"])
    handles = [RemoteLikePart(p) for p in parts]
    got = distributed_select(handles, per_class=r["per_class"], bins=r["bins"],
                             gather_limit=r["gather_limit"], resolve=resolve_one_at_a_time,
                             **r["budget_kw"])
    want = reference(r["margins"], r["indices"], r["labels"], per_class=r["per_class"],
                     **r["budget_kw"])

    np.testing.assert_array_equal(got.indices, want)
    assert got.indices.dtype == np.int64
    position = {int(i): j for j, i in enumerate(r["indices"])}
    np.testing.assert_array_equal(
        got.margins, r["margins"][[position[int(i)] for i in got.indices]])
    assert got.passes <= max_passes(r["bins"])
    # The head's inputs per pass: one histogram row of `bins` per group, and at most
    # `gather_limit` pairs per gathered group, summed over the parts.
    groups = np.unique(r["labels"]).size if r["per_class"] else 1
    gather_limit = r["bins"] if r["gather_limit"] is None else r["gather_limit"]
    for h in handles:
        for rows, cols in h.histogram_shapes:
            assert rows <= groups and cols == r["bins"]
    for per_pass in zip(*(h.gathered_per_query for h in handles), strict=True):
        assert (np.sum(per_pass, axis=0) <= gather_limit).all()


@pytest.mark.parametrize("per_class", [False, True])
def test_k_zero_selects_nothing_after_the_census(per_class):
    parts = make_parts(np.array([0.3, 0.1, 0.2]), np.arange(3), np.array([0, 1, 1]),
                       np.array([0, 1, 1]), 2)
    got = distributed_select(parts, k=0, per_class=per_class)
    assert got.indices.size == 0 and got.margins.size == 0
    assert got.passes == 1


@pytest.mark.parametrize("per_class", [False, True])
def test_k_equal_n_selects_everything_without_a_search(per_class):
    margins = np.array([INF, 0.1, -INF, 0.1, 0.0])
    parts = make_parts(margins, np.arange(5), np.array([0, 1, 1, 2, 2]),
                       np.array([1, 0, 1, 0, 1]), 2)
    got = distributed_select(parts, k=5, per_class=per_class)
    np.testing.assert_array_equal(got.indices, np.arange(5))
    np.testing.assert_array_equal(got.margins, margins)
    assert got.passes == 2  # census, take


def test_empty_parts_are_ignored():
    empty = SelectionPart(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    full = SelectionPart(np.array([0.5, 0.2, 0.9]), np.array([10, 11, 12]), np.array([0, 0, 1]))
    for per_class in (False, True):
        got = distributed_select([empty, full, empty], ratio=0.5, per_class=per_class)
        np.testing.assert_array_equal(got.indices, [11, 12] if per_class else [10, 11])


@pytest.mark.parametrize("per_class", [False, True])
def test_only_empty_parts_select_nothing(per_class):
    empty = SelectionPart(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64),
                          np.zeros(0, dtype=np.int64))
    for parts in ([], [empty], [empty, empty]):
        assert distributed_select(parts, ratio=0.3, per_class=per_class).indices.size == 0
        assert distributed_select(parts, k=0, per_class=per_class).indices.size == 0
        with pytest.raises(ValueError, match=r"k must be an integer in \[0, 0\]"):
            distributed_select(parts, k=1, per_class=per_class)


def test_all_equal_values_resolve_by_index_threshold_without_gathering_ties():
    n, k = 10_000, 3_001
    owner = np.arange(n) % 4
    parts = make_parts(np.ones(n), np.arange(n), np.zeros(n, dtype=np.int64), owner, 4)
    handles = [RemoteLikePart(p) for p in parts]
    got = distributed_select(handles, k=k, bins=16, gather_limit=0,
                             resolve=resolve_one_at_a_time)
    np.testing.assert_array_equal(got.indices, np.arange(k))
    assert got.passes <= max_passes(16)
    assert all(g.sum() == 0 for h in handles for g in h.gathered_per_query)


def test_worst_case_passes_stay_within_the_bound():
    """Keys at both ends of the 64-bit range, adjacent keys, ties, indices spread widely."""
    margins = np.array([0.0, 0.0, 0.0, -INF, INF, -5e-324, 5e-324, 1.0, -0.0, 0.0])
    indices = np.array([8, 9, 2**63 - 1, 100, 101, 102, 103, 0, 2**62, 2**40], dtype=np.int64)
    labels = np.zeros(10, dtype=np.int64)
    parts = make_parts(margins, indices, labels, np.arange(10) % 3, 3)
    for bins, gather_limit in [(2, 0), (3, 0), (DEFAULT_BINS, 0), (DEFAULT_BINS, None)]:
        for k in range(11):
            got = distributed_select(parts, k=k, bins=bins, gather_limit=gather_limit)
            np.testing.assert_array_equal(got.indices, reference(margins, indices, labels, k=k))
            assert got.passes <= max_passes(bins)
    # The 3rd smallest pair is (0.0, 8): its key's neighbours are one key away, and so is
    # the next tied index (9), so both 64-bit searches run to the end; 2 bins: 130 at most.
    deep = distributed_select(parts, k=3, bins=2, gather_limit=0)
    np.testing.assert_array_equal(deep.indices, [8, 100, 102])
    assert deep.passes >= 120


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("decimals", [None, 2])
def test_large_round_matches_select_in_few_passes(per_class, decimals):
    rng = np.random.default_rng(7)
    n = 100_000
    margins = np.abs(rng.normal(size=n)).astype(np.float32)
    if decimals is not None:
        margins = np.round(margins, decimals)  # ~300 distinct values: heavy ties
    labels = rng.integers(0, 10, n)
    owner = rng.integers(0, 8, n)
    parts = make_parts(margins, np.arange(n), labels, owner, 8, rng.permutation(n))
    got = distributed_select(parts, ratio=0.3, per_class=per_class)
    np.testing.assert_array_equal(got.indices, select(margins, labels, ratio=0.3,
                                                      per_class=per_class))
    # Census, one or two histograms, a gather, the take: the common case, far below 14.
    assert got.passes <= 5


def test_pass_bound_per_bin_count():
    assert max_passes(2) == 130
    assert max_passes(DEFAULT_BINS) == max_passes(2**12) == 14
    assert max_passes(2**16) == 10
    assert max_passes(2**32) == 6


def test_signed_zero_ties_with_zero_and_infinities_order_last_and_first():
    margins = np.array([0.0, INF, -0.0, -INF, 0.0, INF, -INF])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    parts = make_parts(margins, np.arange(7), labels, np.array([0, 1, 0, 1, 0, 1, 0]), 2)
    for per_class in (False, True):
        for k in range(8):
            got = distributed_select(parts, k=k, per_class=per_class)
            want = reference(margins, np.arange(7), labels, k=k, per_class=per_class)
            np.testing.assert_array_equal(got.indices, want)


def test_tiny_and_absent_classes_get_water_filled_quotas():
    rng = np.random.default_rng(3)
    labels = np.array([0] * 1 + [5] * 50 + [9] * 2)
    margins = rng.integers(0, 3, size=labels.size).astype(np.float64)
    owner = rng.integers(0, 5, size=labels.size)
    parts = make_parts(margins, np.arange(labels.size), labels, owner, 5)
    for ratio in (0.01, 0.1, 0.5, 0.97, 1.0):
        got = distributed_select(parts, ratio=ratio, per_class=True)
        want = reference(margins, np.arange(labels.size), labels, ratio=ratio, per_class=True)
        np.testing.assert_array_equal(got.indices, want)


def test_overlapping_parts_are_reported_when_they_meet_the_selection():
    a = SelectionPart(np.array([1.0, 1.0]), np.array([5, 6]))
    b = SelectionPart(np.array([1.0]), np.array([5]))
    for gather_limit in (0, None):
        with pytest.raises(ValueError, match="dataset index 5 is held by more than one part"):
            distributed_select([a, b], k=1, gather_limit=gather_limit)


@pytest.mark.parametrize("kwargs, message", [
    ({"margins": [0.1, float("nan")], "indices": [0, 1]}, "1 NaN values"),
    ({"margins": [1, 2], "indices": [0, 1]}, "floating point"),
    ({"margins": [[0.1]], "indices": [[0]]}, "1-D"),
    ({"margins": [0.1, 0.2], "indices": [0]}, "indices must have shape"),
    ({"margins": [0.1, 0.2], "indices": [0.0, 1.0]}, "indices must be integers"),
    ({"margins": [0.1, 0.2], "indices": [3, 3]}, "unique within a part"),
    ({"margins": [0.1, 0.2], "indices": [0, 1], "labels": [0]}, "labels must have shape"),
    ({"margins": [0.1, 0.2], "indices": [0, 1], "labels": [0, -2]}, "labels must be >= 0"),
    ({"margins": [0.1, 0.2], "indices": [0, 1], "labels": [0.5, 1]}, "labels must be integers"),
])
def test_part_validates_its_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelectionPart(**{key: np.asarray(v) for key, v in kwargs.items()})


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of k and ratio"),
    ({"k": 1, "ratio": 0.5}, "exactly one of k and ratio"),
    ({"k": 4}, r"k must be an integer in \[0, 3\]"),
    ({"k": -1}, r"k must be an integer in \[0, 3\]"),
    ({"k": 1.0}, r"k must be an integer"),
    ({"ratio": 0.0}, r"ratio must be in \(0, 1\]"),
    ({"ratio": 0.5, "bins": 1}, "bins must be an integer >= 2"),
    ({"ratio": 0.5, "gather_limit": -1}, "gather_limit must be an integer >= 0"),
    ({"ratio": 0.5, "per_class": True}, "needs labels"),
])
def test_head_validates_its_arguments(kwargs, message):
    parts = [SelectionPart(np.array([0.3, 0.1, 0.2]), np.arange(3))]
    with pytest.raises(ValueError, match=message):
        distributed_select(parts, **kwargs)


def test_docstring_examples_run():
    failures, _ = doctest.testmod(ds, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


@pytest.mark.parametrize("order", ["ascending", "reversed", "interleaved"])
def test_merge_is_ascending_whatever_the_parts_order(order):
    """Contiguous parts given in index order are concatenated without a sort; parts in
    any other order (or holding interleaved indices) are still merged by index."""
    rng = np.random.default_rng(3)
    n = 1000
    margins = rng.integers(0, 20, n).astype(np.float32)
    labels = rng.integers(0, 4, n)
    if order == "interleaved":
        slices = [np.arange(i, n, 3) for i in range(3)]
    else:
        slices = [np.arange(a, b) for a, b in ((0, 300), (300, 650), (650, n))]
        if order == "reversed":
            slices = slices[::-1]
    parts = [SelectionPart(margins[s], s, labels[s]) for s in slices]
    for per_class in (False, True):
        got = distributed_select(parts, ratio=0.3, per_class=per_class)
        expected = select(margins, labels, ratio=0.3, per_class=per_class)
        np.testing.assert_array_equal(got.indices, expected)
        np.testing.assert_array_equal(got.margins, margins[expected])
