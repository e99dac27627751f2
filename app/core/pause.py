"""Letting others run: what a long piece of work does between two of its steps."""
from __future__ import annotations

import time

#: the pause between two steps of one piece of work
PAUSE_SECONDS = 0.0001


def pause() -> None:
    """Let the worker serve others between two steps (two queries of one read, two batches):
    a sleep, however short, lets gevent's loop look at its sockets, which ``sleep(0)`` does
    only now and then; with threads it lets the others have the GIL."""
    time.sleep(PAUSE_SECONDS)
