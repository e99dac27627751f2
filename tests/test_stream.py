"""The stream core on its own (no HTTP): where a client resumes when a stream ends."""
from __future__ import annotations

from typing import Callable

from flask import Flask

from app.core.filters import EventFilter
from app.core.records import Author
from app.core.service import Service
from app.core.stream import Batch, End, Snapshot, SnapshotEnd
from app.web.context import EXTENSION
from app.wire import EndReason

RECORDS = 100  # several snapshot pages


def service_with_records(app_factory: Callable[..., Flask]) -> Service:
    service: Service = app_factory().extensions[EXTENSION]
    for n in range(RECORDS):
        service.set("global", "global", f"k.{n:03d}", str(n), Author())
    return service


def items_until_end(stream: object, close_after: type, service: Service) -> list:
    """Every item of ``stream``; the server stops once the first ``close_after`` is out."""
    items = []
    for item in stream:  # type: ignore[attr-defined]
        items.append(item)
        if isinstance(item, close_after) and not service.broker.closed:
            service.broker.close(EndReason.SHUTDOWN)
        if isinstance(item, End):
            return items
    raise AssertionError("the stream ended without an End")


def test_a_stream_cut_during_its_snapshot_resumes_from_where_the_client_stood(app_factory):
    service = service_with_records(app_factory)
    items = items_until_end(service.stream(EventFilter(), None, "sse", snapshot=True),
                            Snapshot, service)
    assert not any(isinstance(item, SnapshotEnd) for item in items)
    assert items[-1] == End(EndReason.SHUTDOWN, 0)  # it had nothing: the log from its start


def test_a_resumed_stream_cut_during_its_fresh_snapshot_keeps_the_clients_position(
        app_factory):
    service = service_with_records(app_factory)
    unknown = service.store.head_id() + 1000  # a position this log never reached
    items = items_until_end(service.stream(EventFilter(), unknown, "sse", snapshot=True),
                            Snapshot, service)
    assert items[-1] == End(EndReason.SHUTDOWN, unknown)


def test_a_stream_cut_after_its_snapshot_resumes_from_the_snapshots_position(app_factory):
    service = service_with_records(app_factory)
    items = items_until_end(service.stream(EventFilter(), None, "sse", snapshot=True),
                            SnapshotEnd, service)
    sent = sum(len(item.records) for item in items if isinstance(item, Snapshot))
    assert sent == RECORDS
    assert items[-1] == End(EndReason.SHUTDOWN, service.store.head_id())


def test_a_stream_cut_during_its_replay_resumes_from_the_last_event_it_replayed(app_factory):
    service = service_with_records(app_factory)
    service.set("global", "global", "later", "1", Author())  # the head moves past the replay
    stream = service.stream(EventFilter(), 1, "sse")
    items = []
    for item in stream:
        items.append(item)
        if isinstance(item, Batch) and not service.broker.closed:
            service.broker.close(EndReason.SHUTDOWN)  # mid-replay: more pages were to come
        if isinstance(item, End):
            break
    replayed = [event.id for item in items if isinstance(item, Batch)
                for bundle in item.bundles for event in bundle.events]
    assert replayed and replayed[-1] < service.store.head_id()
    assert items[-1] == End(EndReason.SHUTDOWN, replayed[-1])
