"""The in-process fan-out, without a server: filter groups sharing one bundle, mailboxes bounded
in events and in bytes, a closed broker, and writing to a waiting stream directly."""
from __future__ import annotations

import threading

from app.core.broker import Broker
from app.core.events import Bundle, Event, bundles
from app.core.filters import EventFilter
from app.core.subscriber import Close, Subscriber
from app.wire import EndReason

from .conftest import wait_until


def event(event_id: int, key: str = "k", scope: str = "global", epoch: float = 0.0,
          data: str = "1") -> Event:
    return Event(event_id, epoch, scope, "global", key, "set", data, None)


def broker(max_events: int = 100, max_bytes: int = 1 << 20) -> tuple[Broker, list]:
    delivered: list = []
    return (Broker(max_events, max_bytes, lambda t, b, timed, n: delivered.extend([(t, b)] * n)),
            delivered)


def ids(items: list) -> list[int]:
    return [e.id for bundle in items for e in bundle.events]


def test_subscribers_with_one_filter_share_the_bundle_and_its_frames():
    fanout, _ = broker()
    first = fanout.subscribe(EventFilter(patterns=("a.*",)), "sse")
    second = fanout.subscribe(EventFilter(patterns=("a.*",)), "ws")
    other = fanout.subscribe(EventFilter(patterns=("b.*",)), "sse")
    fanout.publish([event(1, "a.x"), event(2, "b.x"), event(3, "a.y")])

    [mine], [theirs], [others] = (s.take(0, 100, 1 << 20) for s in (first, second, other))
    assert mine is theirs
    assert ids([mine]) == [1, 3]
    assert mine.sse == event(1, "a.x").sse_frame + event(3, "a.y").sse_frame
    assert ids([others]) == [2]
    assert fanout.head_id == 3 and len(fanout) == 3


def test_a_subscriber_over_its_event_bound_is_closed_and_removed_alone():
    fanout, _ = broker(max_events=3)
    slow = fanout.subscribe(EventFilter(), "sse")
    fast = fanout.subscribe(EventFilter(scope="global"), "sse")
    fanout.publish([event(1), event(2)])
    assert len(fast.take(0, 100, 1 << 20)) == 1
    fanout.publish([event(3), event(4)])

    assert slow.take(0, 100, 1 << 20) == [Close(EndReason.OVERFLOW)]
    assert ids(fast.take(0, 100, 1 << 20)) == [3, 4]
    assert len(fanout) == 1
    fanout.unsubscribe(slow)  # the stream's own cleanup afterwards changes nothing
    assert len(fanout) == 1


def test_a_subscriber_over_its_byte_bound_is_closed_though_few_events_wait():
    big = "x" * 40_000
    fanout, _ = broker(max_events=1000, max_bytes=100_000)
    slow = fanout.subscribe(EventFilter(), "sse")
    fanout.publish([event(1, data=f'"{big}"'), event(2, data=f'"{big}"')])
    assert slow.take(0, 1, 1 << 20) != []  # about 80 KB waited: under the bound
    fanout.publish([event(n, data=f'"{big}"') for n in (3, 4, 5)])
    assert slow.take(0, 100, 1 << 20) == [Close(EndReason.OVERFLOW)]
    assert len(fanout) == 0


def test_an_overflowed_subscriber_gets_no_later_bundle_of_the_same_publish():
    fanout, _ = broker(max_events=1000, max_bytes=100_000)
    slow = fanout.subscribe(EventFilter(), "sse")
    large, small = event(1, data='"%s"' % ("x" * 150_000)), event(2)
    fanout.publish([large, small])  # two bundles: the first overflows, the second would fit
    assert slow.take(0, 100, 1 << 20) == [Close(EndReason.OVERFLOW)]


def test_take_returns_whole_bundles_up_to_the_event_or_byte_limit_then_the_rest():
    fanout, _ = broker()
    subscriber = fanout.subscribe(EventFilter(), "sse")
    for first in (1, 4, 7):
        fanout.publish([event(first), event(first + 1), event(first + 2)])
    assert [len(b) for b in subscriber.take(0, 4, 1 << 20)] == [3, 3]
    assert [len(b) for b in subscriber.take(0, 4, 1)] == [3]  # at least one bundle
    assert subscriber.take(0, 4, 1 << 20) == []


def test_large_publishes_are_cut_into_bundles_of_bounded_size():
    events = [event(n, data='"%s"' % ("x" * 20_000)) for n in range(1, 11)]
    cut = bundles(events, limit=65536)
    assert [e.id for b in cut for e in b.events] == list(range(1, 11))
    assert all(b.size <= 65536 or len(b) == 1 for b in cut) and len(cut) == 4
    assert bundles([event(1, data='"%s"' % ("x" * 100_000))], limit=65536)[0].size > 65536


def test_a_closed_broker_ends_every_stream_and_each_new_one_at_once():
    fanout, _ = broker()
    subscriber = fanout.subscribe(EventFilter(), "sse")
    fanout.publish([event(1)])
    fanout.close()
    assert subscriber.take(0, 100, 1 << 20) == [Close(EndReason.SHUTDOWN)]
    assert len(fanout) == 0
    late = fanout.subscribe(EventFilter(), "sse")
    assert late.take(0, 100, 1 << 20) == [Close(EndReason.SHUTDOWN)] and len(fanout) == 0


def test_a_hang_up_ends_the_stream_as_the_clients_doing():
    fanout, _ = broker()
    subscriber = fanout.subscribe(EventFilter(), "sse")
    fanout.publish([event(1)])
    subscriber.hang_up()
    assert subscriber.take(0, 100, 1 << 20) == [Close(EndReason.CLIENT)]


def test_bundle_after_keeps_only_newer_events():
    bundle = Bundle([event(5), event(6), event(7)])
    assert bundle.after(4) is bundle
    assert ids([bundle.after(5)]) == [6, 7]
    assert bundle.after(7) is None


def test_filters_differing_in_scope_id_do_not_share_a_bundle():
    fanout, _ = broker()
    mine = fanout.subscribe(EventFilter(scope_id="global"), "sse")
    other = fanout.subscribe(EventFilter(scope_id="elsewhere"), "sse")
    fanout.publish([event(1)])
    assert len(mine.take(0, 100, 1 << 20)) == 1 and other.take(0, 100, 1 << 20) == []


def test_an_event_holds_its_payload_once_and_cuts_its_json_from_its_frame():
    one = Event(9, 0.0, "global", "global", "k", "set", '{"big":"%s"}' % ("x" * 1000), None,
                "node", "actor", "wf")
    assert one.sse_frame.startswith(b"id: 9\ndata: {") and one.sse_frame.endswith(b"}\n\n")
    assert one.json_bytes == one.sse_frame[len(b"id: 9\ndata: "):-2]
    assert not hasattr(one, "__dict__")  # slots only: no cached copies


# -- writing to a waiting stream directly ----------------------------------------------------

class StandInWriter:
    """A direct writer without a socket: records what it was given."""

    def __init__(self, outcome: str = "whole") -> None:
        self.outcome = outcome  # "whole", "partial" or "fails"
        self.written: list[Bundle] = []
        self.flushed: list[Bundle] = []
        self.pending: Bundle | None = None

    @property
    def unsent(self) -> bool:
        return self.pending is not None

    def write(self, bundle: Bundle) -> bool:
        if self.outcome == "fails":
            return False
        self.written.append(bundle)
        if self.outcome == "partial":
            self.pending = bundle
        return True

    def flush(self) -> Bundle | None:
        finished, self.pending = self.pending, None
        if finished is not None:
            self.flushed.append(finished)
        return finished


def waiting_with(writer: StandInWriter, timeout: float
                 ) -> tuple[Broker, Subscriber, threading.Thread, list, list]:
    """A subscriber with ``writer`` attached, its ``take`` waiting in a thread."""
    fanout, delivered = broker(max_events=10)
    subscriber = fanout.subscribe(EventFilter(), "sse")
    subscriber.attach(writer)
    taken: list = []
    thread = threading.Thread(target=lambda: taken.append(subscriber.take(timeout, 100, 1 << 20)))
    thread.start()
    wait_until(lambda: subscriber._idle, message="the subscriber to wait")
    return fanout, subscriber, thread, taken, delivered


def test_a_waiting_stream_is_written_to_without_waking_it():
    writer = StandInWriter()
    fanout, subscriber, thread, taken, delivered = waiting_with(writer, timeout=0.3)
    fanout.publish([event(1), event(2)])
    assert ids(writer.written) == [1, 2]
    assert subscriber.last_id == 2 and ids(delivered[0][1]) == [1, 2]
    thread.join()
    assert taken == [[]]  # it slept through: nothing was queued for it


def test_what_a_direct_write_leaves_is_flushed_before_anything_else():
    writer = StandInWriter("partial")
    fanout, subscriber, thread, taken, delivered = waiting_with(writer, timeout=30)
    fanout.publish([event(1)])
    thread.join(timeout=5)
    assert taken == [[]] and ids(writer.flushed) == [1]
    assert ids(delivered[0][1]) == [1]  # counted once the rest is out
    fanout.publish([event(2)])  # not waiting now: queued for the stream's own write
    assert ids(subscriber.take(0, 100, 1 << 20)) == [2]


def test_a_failed_direct_write_leaves_the_bundle_to_the_stream():
    writer = StandInWriter("fails")
    fanout, subscriber, thread, taken, _ = waiting_with(writer, timeout=30)
    fanout.publish([event(1)])
    thread.join(timeout=5)
    assert ids(taken[0]) == [1]
    assert subscriber.last_id == 0


def test_a_bundle_written_to_many_waiting_streams_is_counted_once_for_all_of_them():
    fanout, delivered = broker()
    counted: list = []
    fanout._delivered = lambda transport, bundles, timed, n: counted.append((transport, n))
    subscribers = [fanout.subscribe(EventFilter(), "sse") for _ in range(3)]
    for subscriber in subscribers:
        subscriber.attach(StandInWriter())
        subscriber._idle = True  # as if waiting in ``take``
    fanout.publish([event(1)])
    assert counted == [("sse", 3)]
    assert [s.last_id for s in subscribers] == [1, 1, 1]
