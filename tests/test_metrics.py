"""Delivery latencies are counted per bundle and per group of subscribers written at once; the
answer equals counting each event for each subscriber."""
from __future__ import annotations

import bisect

from hypothesis import given, strategies as st

from app.core.metrics import BUCKETS, add_latencies


def off_the_bounds(age: float) -> bool:
    """Far enough from a bucket bound that rounding ``now - age`` cannot move it across."""
    return all(abs(age - bound) > 1e-5 for bound in BUCKETS)


AGES = st.one_of(st.floats(-1.0, 0.0), st.floats(0.0, 0.2), st.floats(0.0, 20.0))


@given(now=st.floats(1e9, 2e9), ages=st.lists(AGES.filter(off_the_bounds), min_size=1,
                                              max_size=40), times=st.integers(1, 1000))
def test_latencies_counted_per_bundle_match_counting_each_event(now, ages, times):
    """``times``: one bundle written to that many subscribers at once, counted in one call."""
    epochs = sorted(now - age for age in ages)
    expected, total = [0] * (len(BUCKETS) + 1), 0.0
    for _ in range(times):
        for epoch in epochs:
            seconds = max(0.0, now - epoch)
            expected[bisect.bisect_left(BUCKETS, seconds)] += 1
            total += seconds
    counted = [0] * (len(BUCKETS) + 1)
    assert abs(add_latencies(counted, epochs, now, times) - total) < 1e-6 * times
    assert counted == expected
