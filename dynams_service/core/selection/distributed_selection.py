"""Exact distributed k-selection: the head finds the threshold from small per-part summaries.

Each scorer holds one *part* of a round's scores: its margins, the dataset indices they
belong to (disjoint across parts) and their labels. The head never gathers the margins.
It asks every part for a census (counts and key ranges per group), then for histograms
over a key range, merges them, narrows the range to the bin that holds the wanted rank,
and repeats until the threshold is exact. Each part then returns only its selected
indices and their margins. The result equals :func:`~dynams_service.core.selection.selection.select`
on the concatenated margins and labels, ties included (same budget rule, ties broken by
the lower dataset index, output ascending), globally and per class.

NOTE [ distributed selection ]:

* **Order keys.** Every item is the pair ``(value key, index key)``, both ``uint64``:
  :func:`order_keys` maps a float margin to an integer with the same order (``-inf``
  lowest, ``+inf`` highest, ``-0.0`` equal to ``0.0`` as numpy's sort sees them), and an
  ``int64`` index maps to ``index ^ 2**63``. The selection is the ``k`` smallest pairs
  (per class: each class's quota of its smallest pairs), so it is fixed by one inclusive
  threshold pair per group, and every part can apply it on its own.
* **Passes.** A *pass* is one call fanned out to every part. Pass 1 is the census. Each
  summary pass narrows every unresolved group: a histogram of ``bins`` equal-width bins
  over its current range shrinks the range's width ``W`` to ``ceil(W / bins)``; once at
  most ``gather_limit`` items are left in the range, one *gather* pass returns exactly
  those pairs and the head picks the threshold among them. The value phase ends when its
  range is one value key; if that value has more tied items than the rank still needed,
  the index phase runs the same search over the index keys of the tied items only (an
  index threshold, never a gather of all tied values). The last pass is ``take``. With
  ``p = min {p : bins**p >= 2**64}`` (4 for 2**16 bins, 6 for the default 2**12), the
  worst case is ``2 + 2·p`` passes (:func:`max_passes`) whatever N, the number of parts,
  the ties, ±inf or all-equal values; in practice the census, one or two histograms, one
  gather and the take. A group whose range is all wanted (rank = count) stops early.
* **Head memory and work** per pass are ``O(parts × groups × bins)``: one ``(groups,
  bins)`` int64 histogram per part reply (folded into one sum as replies arrive), at most
  ``gather_limit`` pairs per group (``gather_limit`` defaults to ``bins``), and ``O(parts
  × groups)`` for the census, independent of N. Only ``take`` returns O(k) data, the
  selection itself. A part sorts its items once (``O(n log n)``); each later pass costs it
  ``O(groups × bins × log n)`` (binary searches into the sorted keys). ``take`` replies
  are ascending; when the parts hold ascending, disjoint index ranges in the order given
  (one scorer per contiguous shard group), the head concatenates them without a sort.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .selection import budget, class_quotas

__all__ = [
    "DEFAULT_BINS",
    "Census",
    "DistributedSelection",
    "PartHandle",
    "RangeQuery",
    "SelectionPart",
    "Summary",
    "Thresholds",
    "distributed_select",
    "index_keys",
    "key_value",
    "max_passes",
    "order_keys",
]

DEFAULT_BINS = 1 << 12
"""Histogram bins per group and pass: 6 levels for 64-bit keys, 32 KiB per group and reply."""

KEY_MAX = (1 << 64) - 1
_SIGN = np.uint64(1 << 63)
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


def order_keys(values) -> np.ndarray:
    """``uint64`` keys ordered like the float ``values`` (``-0.0`` and ``0.0`` share one key).

    Example:
        >>> order_keys(np.array([np.inf, -1.0, 0.0, -0.0, -np.inf])).argsort(kind="stable")
        array([4, 1, 2, 3, 0])
    """
    v = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 + 0.0 == +0.0: ties, as in sort
    bits = v.view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def index_keys(indices) -> np.ndarray:
    """``uint64`` keys ordered like the ``int64`` ``indices``."""
    return np.asarray(indices, dtype=np.int64).view(np.uint64) ^ _SIGN


def max_passes(bins: int = DEFAULT_BINS) -> int:
    """Worst-case passes of :func:`distributed_select`: census, 2·p searches, take."""
    return 2 + 2 * _levels(bins)


# -- messages between the head and the parts (plain numpy, cheap to pickle) ---------------


@dataclass(frozen=True)
class Census:
    """A part's non-empty groups: labels (per class) or ``[0]`` (global), ascending.

    ``key_min``/``key_max`` bound the value keys and ``index_min``/``index_max`` the index
    keys of each group's items; all arrays have shape ``(G,)``.
    """

    groups: np.ndarray
    counts: np.ndarray
    key_min: np.ndarray
    key_max: np.ndarray
    index_min: np.ndarray
    index_max: np.ndarray


@dataclass(frozen=True)
class RangeQuery:
    """One summary pass: for each row, a group and an inclusive key range ``[lo, hi]``.

    ``on_index`` false: the range is over value keys. True: it is over the index keys of
    the group's items whose value key equals ``value``. ``gather`` true asks for the pairs
    in the range, false for a histogram of ``bins`` bins of ``width`` keys from ``lo``.
    All arrays have shape ``(Q,)``.
    """

    per_class: bool
    bins: int
    group: np.ndarray
    on_index: np.ndarray
    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    width: np.ndarray
    gather: np.ndarray


@dataclass(frozen=True)
class Summary:
    """A part's answer to a :class:`RangeQuery`.

    ``histograms`` has one row of ``bins`` counts per histogram query, in query order;
    the gathered pairs ``(gathered_value, gathered_index)`` answer the query at position
    ``gathered_query``.
    """

    histograms: np.ndarray
    gathered_query: np.ndarray
    gathered_value: np.ndarray
    gathered_index: np.ndarray


@dataclass(frozen=True)
class Thresholds:
    """Keep, in each group, the items with ``(value key, index key) <= (value, index)``."""

    per_class: bool
    group: np.ndarray
    value: np.ndarray
    index: np.ndarray


# -- the part side: what a scorer actor holds and calls ----------------------------------


@dataclass(frozen=True)
class _Layout:
    groups: np.ndarray   # (G,) ascending group ids
    bounds: np.ndarray   # (G + 1,) slice bounds of each group in the sorted arrays
    keys: np.ndarray     # value keys, sorted by (group, value key, index key)
    ikeys: np.ndarray    # index keys, same order
    order: np.ndarray    # positions into the part's original arrays, same order


class SelectionPart:
    """One part's margins, dataset indices and labels, answering the head's passes.

    Args:
        margins: ``(n,)`` floating-point scores; lower is kept first. ``±inf`` allowed,
            NaN not.
        indices: ``(n,)`` integer dataset indices, unique (and disjoint across parts).
        labels: ``(n,)`` integer classes ``>= 0``; needed only for per-class selection.

    A scorer actor builds one per round and exposes :meth:`census`, :meth:`summary` and
    :meth:`take`; in one process the head calls them directly.

    Example:
        >>> parts = [SelectionPart(np.array([0.5, 0.1]), np.array([0, 1])),
        ...          SelectionPart(np.array([0.9, 0.2]), np.array([2, 3]))]
        >>> distributed_select(parts, k=2).indices
        array([1, 3])
    """

    def __init__(self, margins, indices, labels=None, reported=None) -> None:
        m = np.asarray(margins)
        if m.ndim != 1:
            raise ValueError(f"margins must be 1-D (n,), got shape {m.shape}")
        if not np.issubdtype(m.dtype, np.floating):
            raise ValueError(f"margins must be floating point, got dtype {m.dtype}")
        nan = int(np.isnan(m).sum())
        if nan:
            raise ValueError(f"margins contain {nan} NaN values")
        idx = _int64_column("indices", indices, m.shape)
        if np.unique(idx).size != idx.size:
            raise ValueError("indices must be unique within a part")
        y = None
        if labels is not None:
            y = _int64_column("labels", labels, m.shape)
            if y.size and y.min() < 0:
                raise ValueError(f"labels must be >= 0, got minimum {int(y.min())}")
        if reported is not None and np.shape(reported) != m.shape:
            raise ValueError(f"reported must have shape {m.shape} like margins")
        self._margins = m
        self._indices = idx
        self._labels = y
        self._reported = m if reported is None else np.asarray(reported)
        self._layouts: dict[bool, _Layout] = {}

    @property
    def margins(self) -> np.ndarray:
        """The values the part is ordered by (read-only view)."""
        return _read_only(self._margins)

    @property
    def indices(self) -> np.ndarray:
        """The dataset indices, int64 (read-only view)."""
        return _read_only(self._indices)

    @property
    def labels(self) -> np.ndarray | None:
        """The integer classes, int64, or None (read-only view)."""
        return None if self._labels is None else _read_only(self._labels)

    @property
    def reported(self) -> np.ndarray:
        """What :meth:`take` returns beside the indices: ``reported`` if given, else the
        margins (a re-keyed part built by a selection rule reports the original scores)."""
        return _read_only(self._reported)

    def __len__(self) -> int:
        return int(self._indices.size)

    def prepare(self, per_class: bool) -> None:
        """Sort now for ``per_class`` (else the census does): a scorer calls this at the
        end of scoring, so the head's passes find the part ready."""
        self._layout(per_class)

    def census(self, per_class: bool) -> Census:
        """Counts and key ranges of this part's non-empty groups (pass 1)."""
        lay = self._layout(per_class)
        starts, ends = lay.bounds[:-1], lay.bounds[1:]
        if lay.groups.size:
            index_min = np.minimum.reduceat(lay.ikeys, starts)
            index_max = np.maximum.reduceat(lay.ikeys, starts)
        else:
            index_min = index_max = _EMPTY_U64
        return Census(
            groups=lay.groups, counts=(ends - starts).astype(np.int64),
            key_min=lay.keys[starts], key_max=lay.keys[ends - 1],
            index_min=index_min, index_max=index_max,
        )

    def summary(self, query: RangeQuery) -> Summary:
        """Histograms of, or the pairs in, each queried range (one pass of the search)."""
        lay = self._layout(query.per_class)
        hist_rows = np.flatnonzero(~query.gather)
        histograms = np.zeros((hist_rows.size, query.bins), dtype=np.int64)
        row_of = {int(q): r for r, q in enumerate(hist_rows)}
        g_query, g_value, g_index = [], [], []
        for q in range(query.group.size):
            keys, ikeys = self._in_range(lay, query, q)
            if query.gather[q]:
                g_query.append(np.full(keys.size, q, dtype=np.int64))
                g_value.append(keys)
                g_index.append(ikeys)
                continue
            searched = ikeys if query.on_index[q] else keys
            if searched.size:
                lo, width = query.lo[q], query.width[q]
                nbins = -(-(int(query.hi[q]) - int(lo) + 1) // int(width))
                # Bin j holds keys in [lo + j·width, lo + (j+1)·width); edges stay <= hi.
                edges = lo + width * np.arange(1, nbins, dtype=np.uint64)
                cuts = np.searchsorted(searched, edges, side="left")
                histograms[row_of[q], :nbins] = np.diff(cuts, prepend=0, append=searched.size)
        return Summary(
            histograms=histograms,
            gathered_query=np.concatenate(g_query) if g_query else _EMPTY_I64,
            gathered_value=np.concatenate(g_value) if g_value else _EMPTY_U64,
            gathered_index=np.concatenate(g_index) if g_index else _EMPTY_U64,
        )

    def take(self, thresholds: Thresholds) -> tuple[np.ndarray, np.ndarray]:
        """This part's selected dataset indices (ascending) and their margins (or the
        ``reported`` values the part was built with)."""
        pos = self._chosen(thresholds)
        pos = pos[np.argsort(self._indices[pos], kind="stable")]
        return self._indices[pos], self._reported[pos]

    def mask(self, thresholds: Thresholds) -> np.ndarray:
        """``(n,)`` bool in the part's own row order: which rows ``thresholds`` keep."""
        chosen = np.zeros(len(self), dtype=bool)
        chosen[self._chosen(thresholds)] = True
        return chosen

    def _chosen(self, thresholds: Thresholds) -> np.ndarray:
        """Row positions kept by ``thresholds`` (in layout order)."""
        lay = self._layout(thresholds.per_class)
        chosen = []
        for g, value, index in zip(thresholds.group, thresholds.value, thresholds.index,
                                   strict=True):
            start, end = self._group_slice(lay, g)
            keys = lay.keys[start:end]
            below = int(np.searchsorted(keys, value, side="left"))
            tied_end = int(np.searchsorted(keys, value, side="right"))
            tied = lay.ikeys[start + below:start + tied_end]
            count = below + int(np.searchsorted(tied, index, side="right"))
            chosen.append(lay.order[start:start + count])
        return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.intp)

    def _layout(self, per_class: bool) -> _Layout:
        per_class = bool(per_class)
        if per_class not in self._layouts:
            # Keys are built here and only the sorted copies kept: a scorer holding a large
            # part pays ~36 bytes per item for the layout on top of its inputs.
            keys, ikeys = order_keys(self._margins), index_keys(self._indices)
            ascending = bool(np.all(self._indices[1:] > self._indices[:-1]))
            if per_class:
                if self._labels is None:
                    raise ValueError("per-class selection needs labels; this part has none")
                group = self._labels
                order = np.lexsort((ikeys, keys, group))
                groups, starts = np.unique(group[order], return_index=True)
            else:
                # Rows in index order (a scorer's stream): a stable sort by value alone is
                # the (value, index) order, and much cheaper than a two-key lexsort.
                order = (np.argsort(keys, kind="stable") if ascending
                         else np.lexsort((ikeys, keys)))
                groups = np.zeros(1 if order.size else 0, dtype=np.int64)
                starts = np.zeros(groups.size, dtype=np.int64)
            bounds = np.append(starts, order.size).astype(np.int64)
            self._layouts[per_class] = _Layout(
                groups.astype(np.int64), bounds, keys[order], ikeys[order], order)
        return self._layouts[per_class]

    @staticmethod
    def _group_slice(lay: _Layout, group) -> tuple[int, int]:
        g = int(np.searchsorted(lay.groups, group))
        if g == lay.groups.size or lay.groups[g] != group:
            return 0, 0
        return int(lay.bounds[g]), int(lay.bounds[g + 1])

    def _in_range(self, lay: _Layout, query: RangeQuery, q: int):
        """(value keys, index keys) of group ``query.group[q]``'s items in the range."""
        start, end = self._group_slice(lay, query.group[q])
        keys, ikeys = lay.keys[start:end], lay.ikeys[start:end]
        if query.on_index[q]:
            a = int(np.searchsorted(keys, query.value[q], side="left"))
            b = int(np.searchsorted(keys, query.value[q], side="right"))
            keys, ikeys = keys[a:b], ikeys[a:b]
            searched = ikeys
        else:
            searched = keys
        a = int(np.searchsorted(searched, query.lo[q], side="left"))
        b = int(np.searchsorted(searched, query.hi[q], side="right"))
        return keys[a:b], ikeys[a:b]


# -- the head side ----------------------------------------------------------------------


class PartHandle(Protocol):
    """What the head calls on a part; a :class:`SelectionPart` is one.

    Over Ray, a handle's methods may return futures (``actor.summary.remote``) and the
    head is given ``resolve=ray.get`` to turn one pass's futures into values.
    """

    def census(self, per_class: bool) -> Any: ...

    def summary(self, query: RangeQuery) -> Any: ...

    def take(self, thresholds: Thresholds) -> Any:
        """(indices ascending, their margins) of this part's selected items."""
        ...


@dataclass(frozen=True)
class DistributedSelection:
    """The selected dataset indices (int64, ascending), their margins, the passes used,
    and the per-group thresholds that define the selection (a later pass can re-apply
    them, as the selection rules do). ``weights``: float32 loss weights aligned with
    ``indices`` when the rule weights its samples (``SelectionRule.reweight``), else None."""

    indices: np.ndarray
    margins: np.ndarray
    passes: int
    thresholds: Thresholds | None = None
    weights: np.ndarray | None = None


@dataclass
class _Search:
    """One group's search for the ``rank``-th smallest pair among ``count`` in a range."""

    group: int
    rank: int          # 1-based rank wanted among the items in [lo, hi]
    count: int         # items in [lo, hi] (in the index phase: tied at ``value``)
    lo: int
    hi: int
    index_lo: int      # the group's index key range, where the index phase starts
    index_hi: int
    value: int | None = None                    # set when the value phase is over
    threshold: tuple[int, int] | None = None    # set when the search is over

    def settle(self) -> None:
        """Finish what needs no more pass: a fully wanted range, or a single-key range."""
        while self.threshold is None:
            if self.rank == self.count:  # everything in the range is kept
                self.threshold = ((self.hi, KEY_MAX) if self.value is None
                                  else (self.value, self.hi))
            elif self.lo == self.hi:
                if self.value is not None:
                    raise ValueError(f"dataset index {_index_of(self.lo)} is held by more "
                                     f"than one part; parts must be disjoint")
                self.value = self.lo  # tied at one value: search their indices next
                self.lo, self.hi = self.index_lo, self.index_hi
            else:
                return


def distributed_select(
    parts: Sequence[PartHandle],
    *,
    k: int | None = None,
    ratio: float | None = None,
    per_class: bool = False,
    bins: int = DEFAULT_BINS,
    gather_limit: int | None = None,
    resolve: Callable[[list], Iterable] = list,
    quotas: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None,
    take: bool = True,
) -> DistributedSelection:
    """Select exactly what ``select()`` would on the parts' concatenation, without a gather.

    Args:
        parts: the part handles, e.g. :class:`SelectionPart` objects.
        k: number of samples to keep, in ``[0, N]``; or give ``ratio`` instead.
        ratio: fraction kept, in (0, 1]; ``k = budget(N, ratio)``.
        per_class: split ``k`` over classes with :func:`class_quotas` (needs labels).
        bins: histogram bins per group and pass (>= 2); more bins, fewer passes.
        gather_limit: a range with at most this many items is resolved by gathering its
            pairs (default ``bins``; 0 never gathers).
        resolve: turns the list of one pass's call results into the values (default
            ``list``: in-process parts return values; over Ray, ``ray.get``). Results
            are folded as the iterable yields them.
        quotas: ``(groups, counts, k) -> quota per group`` replaces the per-class split
            (with ``per_class``; the quotas must sum to ``k``). Selection rules use it to
            give strata their own budgets.
        take: false skips the last pass: the result has the thresholds and no indices.

    Returns:
        :class:`DistributedSelection`; ``passes <= max_passes(bins)``.

    Raises:
        ValueError: bad arguments, labels missing for ``per_class``, or a dataset index
            held by two parts (found when it meets the threshold or the selection; a
            full disjointness check would need the gather this function avoids).

    Example:
        >>> parts = [SelectionPart(np.array([0.3, 0.1, 0.3]), np.array([4, 0, 2]),
        ...                        np.array([0, 0, 1])),
        ...          SelectionPart(np.array([0.2]), np.array([1]), np.array([1]))]
        >>> distributed_select(parts, ratio=0.5, per_class=True).indices
        array([0, 1])
    """
    if (k is None) == (ratio is None):
        raise ValueError(f"give exactly one of k and ratio, got k={k!r}, ratio={ratio!r}")
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    gather_limit = bins if gather_limit is None else gather_limit
    if not isinstance(gather_limit, int) or gather_limit < 0:
        raise ValueError(f"gather_limit must be an integer >= 0, got {gather_limit!r}")
    per_class = bool(per_class)
    passes = 0

    def fan_out(method: str, argument) -> Iterable:
        nonlocal passes
        passes += 1
        return resolve([getattr(part, method)(argument) for part in parts])

    groups, counts, searches = _census(fan_out(SelectionPart.census.__name__, per_class))
    total = int(counts.sum())
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= total:
            raise ValueError(f"k must be an integer in [0, {total}] (the parts' size), got {k!r}")
        keep = int(k)
    else:
        keep = budget(total, ratio)
    if quotas is not None and per_class:
        group_quotas = np.asarray(quotas(groups, counts, keep), dtype=np.int64)
        if (group_quotas.shape != counts.shape or int(group_quotas.sum()) != keep
                or (group_quotas < 0).any() or (group_quotas > counts).any()):
            raise ValueError(f"quotas must give each of the {counts.size} groups at most its "
                             f"count and sum to k={keep}, got {group_quotas.tolist()[:16]}")
    elif per_class:
        group_quotas = class_quotas(counts, keep)
    else:
        group_quotas = np.minimum(counts, keep)
    active = []
    for search, quota in zip(searches, group_quotas, strict=True):
        if quota:
            search.rank = int(quota)
            search.settle()
            active.append(search)

    while any(s.threshold is None for s in active):
        if passes >= max_passes(bins) - 1:
            raise AssertionError(f"search not done after {passes} passes; the bound is "
                                 f"{max_passes(bins)} (did a part change between passes?)")
        _refine([s for s in active if s.threshold is None], per_class, bins, gather_limit,
                fan_out)

    thresholds = Thresholds(
        per_class=per_class,
        group=np.array([s.group for s in active], dtype=np.int64),
        value=np.array([s.threshold[0] for s in active], dtype=np.uint64),
        index=np.array([s.threshold[1] for s in active], dtype=np.uint64),
    )
    if not active or not take:
        return DistributedSelection(_EMPTY_I64, np.zeros(0, dtype=np.float64), passes,
                                    thresholds)
    indices, margins = _merge_taken(fan_out(SelectionPart.take.__name__, thresholds))
    repeated = np.flatnonzero(indices[1:] == indices[:-1])
    if repeated.size:
        raise ValueError(f"dataset index {int(indices[repeated[0]])} is held by more than "
                         f"one part; parts must be disjoint")
    if indices.size != keep:
        raise AssertionError(f"expected {keep} selected samples from the parts, got "
                             f"{indices.size} (did a part change between passes?)")
    return DistributedSelection(indices, margins, passes, thresholds)


def _merge_taken(replies: Iterable[tuple[np.ndarray, np.ndarray]]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The parts' selections as one list ordered by dataset index.

    Each part's reply is ascending. When the parts hold ascending, non-overlapping index
    ranges in the order they were given (a scorer per contiguous shard group), their
    concatenation is already the answer: no O(k log k) sort and no reordered copies, so
    the head's peak is the replies plus one copy of the selection.
    """
    taken = [(np.asarray(i, dtype=np.int64), np.asarray(m)) for i, m in replies]
    indices = np.concatenate([i for i, _ in taken]) if taken else _EMPTY_I64
    margins = (np.concatenate([m for _, m in taken]) if taken
               else np.zeros(0, dtype=np.float64))
    ends = [(int(i[0]), int(i[-1])) for i, _ in taken if i.size]
    del taken
    if all(a[1] < b[0] for a, b in zip(ends[:-1], ends[1:], strict=True)):
        return indices, margins
    order = np.argsort(indices, kind="stable")
    return indices[order], margins[order]


def _census(replies: Iterable[Census]) -> tuple[np.ndarray, np.ndarray, list[_Search]]:
    """Merge the parts' censuses: groups ascending, their sizes, one search per group."""
    replies = list(replies)  # O(parts × groups)
    if not replies:
        return _EMPTY_I64, _EMPTY_I64, []
    groups, inverse = np.unique(np.concatenate([c.groups for c in replies]),
                                return_inverse=True)
    inverse = inverse.reshape(-1)

    def fold(field: str, ufunc, start) -> np.ndarray:
        out = np.full(groups.size, start, dtype=np.asarray(start).dtype)
        ufunc.at(out, inverse, np.concatenate([getattr(c, field) for c in replies]))
        return out

    counts = fold("counts", np.add, np.int64(0))
    key_min = fold("key_min", np.minimum, np.uint64(KEY_MAX))
    key_max = fold("key_max", np.maximum, np.uint64(0))
    index_min = fold("index_min", np.minimum, np.uint64(KEY_MAX))
    index_max = fold("index_max", np.maximum, np.uint64(0))
    searches = [
        _Search(group=int(g), rank=0, count=int(n), lo=int(a), hi=int(b),
                index_lo=int(c), index_hi=int(d))
        for g, n, a, b, c, d in zip(groups, counts, key_min, key_max, index_min, index_max,
                                    strict=True)
    ]
    return groups, counts, searches


def _refine(searches: list[_Search], per_class: bool, bins: int, gather_limit: int,
            fan_out: Callable[[str, Any], Iterable]) -> None:
    """One summary pass: narrow every unresolved search by a histogram or a gather."""
    widths = [-(-(s.hi - s.lo + 1) // bins) for s in searches]
    gather = np.array([s.count <= gather_limit for s in searches], dtype=bool)
    query = RangeQuery(
        per_class=per_class, bins=bins,
        group=np.array([s.group for s in searches], dtype=np.int64),
        on_index=np.array([s.value is not None for s in searches], dtype=bool),
        value=np.array([s.value or 0 for s in searches], dtype=np.uint64),
        lo=np.array([s.lo for s in searches], dtype=np.uint64),
        hi=np.array([s.hi for s in searches], dtype=np.uint64),
        width=np.array(widths, dtype=np.uint64),
        gather=gather,
    )
    hist_rows = np.flatnonzero(~gather)
    merged = np.zeros((hist_rows.size, bins), dtype=np.int64)
    g_query, g_value, g_index = [], [], []
    for reply in fan_out(SelectionPart.summary.__name__, query):
        merged += reply.histograms
        g_query.append(reply.gathered_query)
        g_value.append(reply.gathered_value)
        g_index.append(reply.gathered_index)

    for row, q in enumerate(hist_rows):
        search, width, hist = searches[q], widths[q], merged[row]
        _check_count(search, int(hist.sum()))
        cums = np.cumsum(hist)
        b = int(np.searchsorted(cums, search.rank, side="left"))
        search.rank -= int(cums[b - 1]) if b else 0
        search.count = int(hist[b])
        search.lo += b * width
        search.hi = min(search.hi, search.lo + width - 1)
        search.settle()

    if gather.any():
        g_query = np.concatenate(g_query) if g_query else _EMPTY_I64
        g_value = np.concatenate(g_value) if g_value else _EMPTY_U64
        g_index = np.concatenate(g_index) if g_index else _EMPTY_U64
        order = np.lexsort((g_index, g_value, g_query))  # at most Q × gather_limit pairs
        starts = np.searchsorted(g_query[order], np.arange(len(searches) + 1))
        for q in np.flatnonzero(gather):
            search = searches[q]
            _check_count(search, int(starts[q + 1] - starts[q]))
            pick = order[starts[q] + search.rank - 1]
            search.threshold = (int(g_value[pick]), int(g_index[pick]))


def _check_count(search: _Search, seen: int) -> None:
    if seen != search.count:
        raise AssertionError(f"expected {search.count} items of group {search.group} in "
                             f"range, the parts reported {seen} (did a part change?)")


def _levels(bins: int) -> int:
    """Histogram passes that shrink a 2**64-wide key range to one key: min p, bins**p >= 2**64."""
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    p, reach = 0, 1
    while reach < 1 << 64:
        p, reach = p + 1, reach * bins
    return p


def key_value(key: int) -> float:
    """The float a value key stands for (the inverse of :func:`order_keys`)."""
    k = np.uint64(key)
    bits = (k ^ _SIGN) if k & _SIGN else ~k
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def _index_of(key: int) -> int:
    """The dataset index of an index key (the inverse of :func:`index_keys`)."""
    return key - (1 << 63)


def _int64_column(name: str, values, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` as int64 after checking it is integer and shaped like the margins."""
    a = np.asarray(values)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape} like margins, got {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    return a.astype(np.int64)
