"""Tests for the in-process fan-out: filter groups sharing one bundle, the bounded mailbox, and
the delivery-latency histogram counted per bundle."""
from __future__ import annotations

import bisect
import threading

from hypothesis import given, strategies as st

from app.broker import Broker, Close, Subscriber
from app.events import Bundle, Event
from app.filters import EventFilter
from app.metrics import BUCKETS, _add_latencies

from .conftest import wait_until


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


# -- writing to a waiting stream directly ----------------------------------------------------

class StandInWriter:
    """A ``DirectWriter`` without a socket: records what it was given."""

    usable = True

    def __init__(self, outcome: str = "whole") -> None:
        self.outcome = outcome  # "whole", "partial" or "fails"
        self.written: list[Bundle] = []
        self.flushed: list[bytes] = []
        self.unsent = b""
        self.pending: Bundle | None = None

    def write(self, bundle: Bundle) -> bool:
        if self.outcome == "fails":
            return False
        self.written.append(bundle)
        if self.outcome == "partial":
            self.unsent, self.pending = b"the rest", bundle
        return True

    def flush(self) -> Bundle | None:
        finished = self.pending
        if self.unsent:
            self.flushed.append(self.unsent)
        self.unsent, self.pending = b"", None
        return finished


def waiting_with(writer: StandInWriter,
                 timeout: float) -> tuple[Broker, Subscriber, threading.Thread, list]:
    """A subscriber with ``writer`` attached, its ``take`` waiting in a thread."""
    broker = Broker(head_id=0, maxsize=10)
    subscriber = broker.subscribe(EventFilter(), "sse")
    subscriber.attach(writer)
    taken: list = []
    thread = threading.Thread(target=lambda: taken.append(subscriber.take(timeout, 100)))
    thread.start()
    wait_until(lambda: subscriber._idle, message="the subscriber to wait")
    return broker, subscriber, thread, taken


def test_a_waiting_stream_is_written_to_without_waking_it():
    writer = StandInWriter()
    broker, subscriber, thread, taken = waiting_with(writer, timeout=0.3)
    broker.publish([event(1), event(2)])
    assert [e.id for b in writer.written for e in b.events] == [1, 2]
    assert subscriber.sent_id == 2 and subscriber.last_id == 2
    thread.join()
    assert taken == [[]]  # it slept through: nothing was queued for it


def test_what_a_direct_write_leaves_is_flushed_before_anything_else():
    writer = StandInWriter("partial")
    broker, subscriber, thread, taken = waiting_with(writer, timeout=30)
    broker.publish([event(1)])
    thread.join(timeout=5)
    assert taken == [[]] and writer.flushed == [b"the rest"]
    broker.publish([event(2)])  # not waiting now: queued for the stream's own write
    assert [e.id for b in subscriber.take(0, 100) for e in b.events] == [2]


def test_a_failed_direct_write_leaves_the_bundle_to_the_stream():
    writer = StandInWriter("fails")
    broker, subscriber, thread, taken = waiting_with(writer, timeout=30)
    broker.publish([event(1)])
    thread.join(timeout=5)
    assert [e.id for b in taken[0] for e in b.events] == [1]
    assert subscriber.sent_id is None


def test_filters_differing_in_scope_id_do_not_share_a_bundle():
    broker = Broker(head_id=0, maxsize=10)
    mine = broker.subscribe(EventFilter(scope_id="global"), "sse")
    other = broker.subscribe(EventFilter(scope_id="elsewhere"), "sse")
    broker.publish([event(1)])
    assert len(mine.take(0, 100)) == 1 and other.take(0, 100) == []
