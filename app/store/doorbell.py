"""Wake the log followers of other processes on this machine right after a commit.

SQLite has no notifications, so each process binds a Unix datagram socket in a directory named
after the database, and a writer sends one byte to every socket there. A lost or refused ring
costs nothing but latency: the follower's poll still finds the write.
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import tempfile
import threading
import time
from typing import Callable

REFRESH_SECONDS = 1.0


class Doorbell:
    def __init__(self, database_path: str) -> None:
        digest = hashlib.sha1(os.path.abspath(database_path).encode()).hexdigest()[:16]
        self.directory = os.path.join(tempfile.gettempdir(), f"memory-events-{digest}")
        self._own: str | None = None
        self._sender: socket.socket | None = None
        self._peers: list[str] = []
        self._listed = 0.0

    def listen(self, wake: Callable[[], None]) -> None:
        """Bind this process's socket and call ``wake`` for every ring it receives."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, f"{os.getpid()}.sock")
        if os.path.exists(path):
            os.unlink(path)  # left by an earlier process with the same pid
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        self._own = path
        threading.Thread(target=self._receive, args=(receiver, wake), name="memory-doorbell",
                         daemon=True).start()

    @staticmethod
    def _receive(receiver: socket.socket, wake: Callable[[], None]) -> None:
        while True:
            receiver.recv(64)
            wake()

    def ring(self) -> None:
        """Tell every other listening process that the log grew."""
        now = time.monotonic()
        if now - self._listed > REFRESH_SECONDS:
            self._list_peers(now)
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        for peer in self._peers:
            try:
                self._sender.sendto(b"!", peer)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    self._forget(peer)

    def _list_peers(self, now: float) -> None:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []
        self._peers = [os.path.join(self.directory, name) for name in names
                       if name.endswith(".sock") and os.path.join(self.directory, name) != self._own]
        self._listed = now

    def _forget(self, peer: str) -> None:
        """A socket nobody listens on any more belongs to a process that is gone."""
        try:
            os.unlink(peer)
        except OSError:
            pass
        self._peers = [p for p in self._peers if p != peer]
