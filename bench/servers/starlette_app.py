"""sse-starlette under uvicorn: one ``asyncio.Queue`` per stream, a publish puts the event in each.

``SSE_PING_SECONDS`` sets the keepalive interval (the library's default is 15 s).
"""
from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator

from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.servers.change import change_event

PING_SECONDS = float(os.environ.get("SSE_PING_SECONDS", "15"))
SEP = "\n"
queues: set[asyncio.Queue] = set()


async def stream(request: Request) -> EventSourceResponse:
    # Registered before the response starts, so the first comment means "subscribed".
    waiting: asyncio.Queue = asyncio.Queue()
    queues.add(waiting)

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(comment="connected", sep=SEP)
            while True:
                yield await waiting.get()
        finally:
            queues.discard(waiting)

    return EventSourceResponse(events(), ping=PING_SECONDS, sep=SEP)


async def publish(request: Request) -> Response:
    event_id, event = change_event(await request.json())
    message = ServerSentEvent(data=event, id=str(event_id), sep=SEP)
    for waiting in queues:
        waiting.put_nowait(message)
    return Response(status_code=204)


app = Starlette(routes=[Route("/stream", stream), Route("/publish", publish, methods=["POST"])])
