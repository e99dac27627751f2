"""Wake the log followers of other processes on this machine right after a commit.

SQLite has no notifications, so each process binds a Unix datagram socket in a directory named
after the database, and a writer sends one byte to every socket there whose name ends in
``.sock``. A process that has no subscribers renames its socket to ``.idle``, so writes do not
wake it for nothing (on one core, that wake-up cost a writer half its speed). A lost or refused
ring costs nothing but latency: the follower's poll still finds the write.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import os
import socket
import tempfile
import threading
import time
from typing import Callable

RELIST_SECONDS = 1.0
#: the ends of a socket's name: rung by writes, or not
LISTENING, IDLE = ".sock", ".idle"


class Doorbell:
    def __init__(self, database_path: str) -> None:
        digest = hashlib.sha1(os.path.abspath(database_path).encode()).hexdigest()[:16]
        self.directory = os.path.join(tempfile.gettempdir(), f"memory-events-{digest}")
        self._own: str | None = None  # this process's socket, under the name it has now
        self._sender: socket.socket | None = None
        self._peers: list[str] = []
        self._listed_version = -1
        self._listed_at = 0.0

    def listen(self, wake: Callable[[], None]) -> None:
        """Bind this process's socket, quiet until ``audible``, and call ``wake`` for every ring
        it receives."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        for name in (LISTENING, IDLE):  # left by an earlier process with the same pid
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name))
        self._sweep()
        path = self._path(IDLE)
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        self._own = path
        atexit.register(self._leave)
        threading.Thread(target=self._receive, args=(receiver, wake), name="memory-doorbell",
                         daemon=True).start()

    def _path(self, suffix: str) -> str:
        return os.path.join(self.directory, f"{os.getpid()}{suffix}")

    def audible(self, on: bool) -> None:
        """Let writes ring this process (it has subscribers), or not; the socket stays bound
        under either name."""
        if self._own is None:
            return
        wanted = self._path(LISTENING if on else IDLE)
        if wanted != self._own:
            os.rename(self._own, wanted)
            self._own = wanted

    @staticmethod
    def _receive(receiver: socket.socket, wake: Callable[[], None]) -> None:
        while True:
            receiver.recv(64)
            wake()

    def ring(self) -> None:
        """Tell every other listening process that the log grew."""
        self._list_peers_if_changed()
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        for peer in self._peers:
            try:
                self._sender.sendto(b"!", peer)
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:  # nobody listens: its process is gone
                    with contextlib.suppress(OSError):
                        os.unlink(peer)
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # ENOENT: gone quiet
                    self._peers = [p for p in self._peers if p != peer]

    def _list_peers_if_changed(self) -> None:
        """One ``stat`` per ring: the directory changes whenever a process joins or leaves.
        A change within the same clock tick as the last listing is caught a second later."""
        try:
            version = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            self._peers = []
            return
        now = time.monotonic()
        if version == self._listed_version and now - self._listed_at < RELIST_SECONDS:
            return
        self._listed_version, self._listed_at = version, now
        paths = (os.path.join(self.directory, name) for name in os.listdir(self.directory))
        self._peers = [path for path in paths if path.endswith(LISTENING) and path != self._own]

    def _leave(self) -> None:
        """Remove this process's socket, and the directory once no process uses it."""
        if self._own is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._own)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)

    def _sweep(self) -> None:
        """Remove the sockets of processes that are gone: those that went quiet are never rung,
        so no refused ring would find them."""
        for name in os.listdir(self.directory):
            pid = name.split(".", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))
            except PermissionError:  # another user's process: alive
                pass
