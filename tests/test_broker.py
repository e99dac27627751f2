"""Tests for the in-process fan-out: filter groups sharing one bundle, the bounded mailbox, and
the delivery-latency histogram counted per bundle."""
from __future__ import annotations

import bisect

from hypothesis import given, strategies as st

from app.broker import Broker, Close
from app.events import Bundle, Event
from app.filters import EventFilter
from app.metrics import BUCKETS, _add_latencies


def event(event_id: int, key: str = "k", scope: str = "global", epoch: float = 0.0) -> Event:
    return Event(event_id, epoch, scope, "global", key, "set", "1", None, "", "")


def test_subscribers_with_one_filter_share_the_bundle_and_its_frames():
    broker = Broker(head_id=0, maxsize=10)
    first = broker.subscribe(EventFilter(patterns=("a.*",)), "sse")
    second = broker.subscribe(EventFilter(patterns=("a.*",)), "ws")
    other = broker.subscribe(EventFilter(patterns=("b.*",)), "sse")
    broker.publish([event(1, "a.x"), event(2, "b.x"), event(3, "a.y")])

    [mine], [theirs], [others] = (s.take(0, 100) for s in (first, second, other))
    assert mine is theirs
    assert [e.id for e in mine.events] == [1, 3]
    assert mine.sse == event(1, "a.x").sse_frame + event(3, "a.y").sse_frame
    assert [e.id for e in others.events] == [2]
    assert broker.head_id == 3 and len(broker) == 3


def test_a_subscriber_over_its_limit_is_closed_and_removed_alone():
    broker = Broker(head_id=0, maxsize=3)
    slow = broker.subscribe(EventFilter(), "sse")
    fast = broker.subscribe(EventFilter(scope="global"), "sse")
    broker.publish([event(1), event(2)])
    assert len(fast.take(0, 100)) == 1
    broker.publish([event(3), event(4)])

    assert slow.take(0, 100) == [Close("overflow")]
    assert [e.id for bundle in fast.take(0, 100) for e in bundle.events] == [3, 4]
    assert len(broker) == 1
    broker.unsubscribe(slow)  # the stream's own cleanup afterwards changes nothing
    assert len(broker) == 1


def test_take_returns_whole_bundles_up_to_the_limit_then_the_rest():
    broker = Broker(head_id=0, maxsize=100)
    subscriber = broker.subscribe(EventFilter(), "sse")
    for first in (1, 4, 7):
        broker.publish([event(first), event(first + 1), event(first + 2)])
    assert [len(b) for b in subscriber.take(0, 4)] == [3, 3]
    assert [len(b) for b in subscriber.take(0, 4)] == [3]
    assert subscriber.take(0, 4) == []


def test_an_ending_stream_drops_what_waits_and_gets_the_end_last():
    broker = Broker(head_id=0, maxsize=100)
    subscriber = broker.subscribe(EventFilter(), "sse")
    broker.publish([event(1)])
    broker.close_all("shutdown")
    assert subscriber.take(0, 100) == [Close("shutdown")]
    assert len(broker) == 0


def test_bundle_after_keeps_only_newer_events():
    bundle = Bundle([event(5), event(6), event(7)])
    assert bundle.after(4) is bundle
    assert [e.id for e in bundle.after(5).events] == [6, 7]
    assert bundle.after(7) is None


def off_the_bounds(age: float) -> bool:
    """Far enough from a bucket bound that rounding ``now - age`` cannot move it across."""
    return all(abs(age - bound) > 1e-5 for bound in BUCKETS)


AGES = st.one_of(st.floats(-1.0, 0.0), st.floats(0.0, 0.2), st.floats(0.0, 20.0))


@given(now=st.floats(1e9, 2e9), ages=st.lists(AGES.filter(off_the_bounds), min_size=1,
                                              max_size=40))
def test_latencies_counted_per_bundle_match_counting_each_event(now, ages):
    epochs = sorted(now - age for age in ages)
    expected, total = [0] * (len(BUCKETS) + 1), 0.0
    for epoch in epochs:
        seconds = max(0.0, now - epoch)
        expected[bisect.bisect_left(BUCKETS, seconds)] += 1
        total += seconds
    counted = [0] * (len(BUCKETS) + 1)
    assert abs(_add_latencies(counted, epochs, now) - total) < 1e-6
    assert counted == expected
