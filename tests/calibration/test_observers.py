"""Streaming observers: exact merging, bounded state, and the histogram's meaning."""

from __future__ import annotations

import numpy as np

from quantship.calibration.observers import HALF_BINS, Histogram, Observer, TensorStats


def _observe(batches: list[np.ndarray]) -> TensorStats:
    o = Observer("t")
    for b in batches:
        o.update(b)
    return o.stats()


def _same(a: TensorStats, b: TensorStats) -> None:
    assert (a.count, a.min, a.max) == (b.count, b.min, b.max)
    ha, hb = a.histogram(), b.histogram()
    assert ha is not None and hb is not None
    assert (ha.exp, ha.lo) == (hb.exp, hb.lo)
    np.testing.assert_array_equal(ha.counts, hb.counts)


def test_min_max_count() -> None:
    s = _observe([np.asarray([1.0, -2.0, 3.0], np.float32), np.asarray([[0.5, 7.0]], np.float32)])
    assert (s.count, s.min, s.max) == (5, -2.0, 7.0)
    assert s.histogram() is not None and s.histogram().total == 5  # type: ignore[union-attr]


def test_two_shards_merge_into_exactly_the_single_pass() -> None:
    rng = np.random.default_rng(0)
    # growing ranges force re-binning along the way, in a different order per shard
    batches = [
        rng.standard_normal(1000).astype(np.float32) * s for s in (0.1, 5.0, 0.01, 40.0, 1.0, 3.0)
    ]
    whole = _observe(batches)
    a = _observe(batches[:2])
    b = _observe(batches[2:])
    _same(a.merge(b), whole)
    _same(b.merge(a), whole)
    _same(_observe(batches[::-1]), whole)  # order does not matter


def test_bin_width_is_the_smallest_power_of_two_that_fits() -> None:
    s = _observe([np.asarray([-3.0, 5.0], np.float32)])
    h = s.histogram()
    assert h is not None
    assert h.width * HALF_BINS > 5.0 and not h.width / 2 * HALF_BINS > 5.0
    # each value sits in the bin [i*w, (i+1)*w) that contains it
    edges = h.edges()
    for v in (-3.0, 5.0):
        k = int(np.searchsorted(edges, v, side="right")) - 1
        assert h.counts[k] >= 1


def test_zeros_before_any_nonzero_value_are_kept() -> None:
    s = _observe([np.zeros(10, np.float32), np.asarray([1.0, -1.0], np.float32)])
    h = s.histogram()
    assert h is not None and h.total == 12
    assert s.merge(_observe([np.zeros(3, np.float32)])).histogram().total == 15  # type: ignore[union-attr]


def test_only_zeros() -> None:
    s = _observe([np.zeros(7, np.float32)])
    assert (s.min, s.max, s.count) == (0.0, 0.0, 7)


def test_nonfinite_values_are_counted_apart() -> None:
    """Attention masks put ±inf inside a graph: counted, kept out of the range and the
    histogram, carried through merge and JSON."""
    o = Observer("scores")
    o.update(np.asarray([[1.0, -np.inf, 3.0, np.nan]], np.float32))
    st = o.stats()
    assert st.nonfinite == 2 and (st.min, st.max) == (1.0, 3.0) and st.count == 4
    hist = st.histogram()
    assert hist is not None and hist.total == 2
    both = st.merge(st)
    assert both.nonfinite == 4
    assert TensorStats.from_json("scores", st.to_json()).nonfinite == 2


def test_state_does_not_grow_with_samples() -> None:
    o = Observer("t")
    rng = np.random.default_rng(1)
    sizes = []
    for _ in range(50):
        o.update(rng.standard_normal(10_000).astype(np.float32))
        sizes.append(o.stats().histogram().counts.size)  # type: ignore[union-attr]
    assert max(sizes) <= 2 * HALF_BINS


def test_abs_counts_match_a_direct_histogram_of_magnitudes() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(5000).astype(np.float32)
    h = _observe([x]).histogram()
    assert h is not None
    abs_c = h.abs_counts()
    assert abs_c.sum() == x.size
    w = h.width
    # |x| in ((k-1)w, kw] for negatives lands in bin k-1; count exactly as documented
    expected = np.zeros_like(abs_c)
    for v in x:
        k = int(np.floor(v / w))
        expected[k if k >= 0 else -k - 1] += 1
    np.testing.assert_array_equal(abs_c, expected)


def test_coarsen_sums_pairs_exactly() -> None:
    h = Histogram(-2, -3, np.asarray([1, 2, 3, 4, 5], np.int64))  # bins -3..1
    c = h.coarsen(-1)  # pairs: (-4,-3)->-2, (-2,-1)->-1, (0,1)->0
    assert (c.lo, c.counts.tolist()) == (-2, [1, 5, 9])


def test_json_roundtrip() -> None:
    s = _observe([np.random.default_rng(3).standard_normal(100).astype(np.float32)])
    back = TensorStats.from_json("t", s.to_json())
    _same(back, s)


def test_minmax_only_observer_keeps_no_histogram() -> None:
    o = Observer("t", histogram=False)
    o.update(np.asarray([1.0, 2.0], np.float32))
    assert o.stats().hist is None


def test_sampled_histogram_does_not_depend_on_batching() -> None:
    from quantship.calibration.observers import HIST_VALUES_PER_SAMPLE

    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 100, 100)).astype(np.float32)  # 30k values per sample
    assert x[0].size > HIST_VALUES_PER_SAMPLE
    one = _observe([x])
    four = _observe([x[i : i + 1] for i in range(4)])
    two = _observe([x[:3], x[3:]])
    _same(one, four)
    _same(one, two)
    assert one.count == x.size and (one.min, one.max) == (float(x.min()), float(x.max()))
    h = one.histogram()
    assert h is not None and 2 * HIST_VALUES_PER_SAMPLE <= h.total <= 4 * HIST_VALUES_PER_SAMPLE
