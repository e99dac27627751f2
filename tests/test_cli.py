"""``flask --app wsgi events …`` as a user runs it: a subprocess talking to a real server."""
from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from app.client import MemoryClient

from .conftest import ROOT, Server, free_port, wait_until

FLASK = [sys.executable, "-m", "flask", "--app", "wsgi", "events"]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z  (\S+)\s+(\S+)  (\S+)  (.*)$")


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without its ``MEMORY_*`` settings, and a database path the
    commands must never create: they talk to the server, not to a store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_")}
    return {**env, "MEMORY_DB_URL": f"sqlite:///{tmp_path}/never-created.db", **extra}


def run(tmp_path: Path, *args: str, stdin: str | None = None,
        **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(FLASK + list(args), cwd=ROOT, env=cli_env(tmp_path, **env),
                            input=stdin, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


class Lines:
    """What a subprocess writes to one pipe, line by line, collected by a thread."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, start: int = 0) -> int:
        """The index of the first line from ``start`` on that contains ``text``."""
        def found() -> int | None:
            return next((i for i, line in enumerate(self.lines) if i >= start and text in line),
                        None)
        wait_until(lambda: found() is not None, timeout=30,
                   message=f"{text!r} in {self.lines}")
        return found()  # type: ignore[return-value]


def stop_with_ctrl_c(process: subprocess.Popen) -> None:
    """Ctrl-C is how a tail or a watch ends: exit code 0, no traceback."""
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


def test_tail_prints_changes_says_when_it_reconnects_and_stops_on_ctrl_c(
        server_factory, tmp_path: Path) -> None:
    server: Server = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    tail = subprocess.Popen(
        FLASK + ["tail", "--url", server.url, "--patterns", "user.*"], cwd=ROOT,
        env=cli_env(tmp_path, COLUMNS="100"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # Ctrl-C in a terminal: SIGINT with its default action, even when these tests were
        # started by something that ignores it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out, err = Lines(tail.stdout), Lines(tail.stderr)
    try:
        err.wait_for("connected to " + server.url)
        client = MemoryClient(server.url)
        client.set("skip.1", 1)
        client.set("user.1", {"name": "Ada"})
        client.set("user.2", "x" * 500)
        client.delete("user.1")
        out.wait_for("delete")
        assert len(out.lines) == 3
        assert LINE.match(out.lines[0]).groups() == (
            "set", "global/global", "user.1", '{"name":"Ada"}')
        assert LINE.match(out.lines[1]).group(3) == "user.2"
        assert len(out.lines[1]) == 100 and out.lines[1].endswith("…")
        assert LINE.match(out.lines[2]).groups() == (
            "delete", "global/global", "user.1", '(deleted; was {"name":"Ada"})')

        server.stop()
        gone = err.wait_for("disconnected: shutdown")
        err.wait_for("Connection refused", gone)
        server.start()
        err.wait_for("reconnected; resuming after event", gone)
        client.set("user.3", 3)
        out.wait_for("user.3")

        stop_with_ctrl_c(tail)
    finally:
        tail.kill()
        tail.wait()
    assert not any("Traceback" in line for line in err.lines), err.lines
    assert not (tmp_path / "never-created.db").exists()


def test_set_get_delete_and_list_from_the_shell(server: Server, tmp_path: Path) -> None:
    url = ["--url", server.url]
    stored = run(tmp_path, "set", "profile", '{"n": 1}', *url)
    assert stored.returncode == 0
    assert json.loads(stored.stdout)["data"] == {"n": 1}
    got = run(tmp_path, "get", "profile", MEMORY_URL=server.url)
    assert got.returncode == 0 and json.loads(got.stdout) == {"n": 1}

    piped = run(tmp_path, "set", "plan", "-", "--scope", "session", "--scope-id", "s1", *url,
                stdin='["a", "b"]')
    assert json.loads(piped.stdout)["scope"] == "session"
    listed = run(tmp_path, "list", "--scope", "session", *url)
    assert [(r["key"], r["data"]) for r in json.loads(listed.stdout)] == [("plan", ["a", "b"])]

    assert run(tmp_path, "delete", "profile", *url).returncode == 0
    missing = run(tmp_path, "get", "profile", *url)
    assert missing.returncode == 1 and "not_found" in missing.stderr
    not_json = run(tmp_path, "set", "profile", "hello", *url)
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
    assert not (tmp_path / "never-created.db").exists()


def test_commands_send_the_api_key_and_explain_failures(server_factory,
                                                        tmp_path: Path) -> None:
    server = server_factory(env={"MEMORY_API_KEY": "sesame"})
    url = ["--url", server.url]
    denied = run(tmp_path, "get", "k", *url)
    assert denied.returncode == 1 and "unauthorized" in denied.stderr
    assert run(tmp_path, "set", "k", "1", *url, MEMORY_API_KEY="sesame").returncode == 0
    assert run(tmp_path, "get", "k", "--api-key", "sesame", *url).stdout.strip() == "1"

    down = run(tmp_path, "tail", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "Connection refused" in down.stderr
    bad_url = run(tmp_path, "get", "k", "--url", "localhost:8080")
    assert bad_url.returncode == 2 and "--url" in bad_url.stderr


#: what the terminal gets before each drawing of the state: home, and clear the screen
REDRAW = b"\x1b[H\x1b[J"


def start_watch(server: Server, tmp_path: Path, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(FLASK + ["watch", "--url", server.url, "--patterns", "user.*",
                                     "--scope", "global"], cwd=ROOT,
                            env=cli_env(tmp_path, COLUMNS="80", LINES="24"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **popen)  # type: ignore[call-overload]


def test_watch_prints_each_new_state_into_a_pipe(server: Server, tmp_path: Path) -> None:
    client = MemoryClient(server.url)
    client.set("user.1", {"name": "Ada"})
    client.set("other", 0)
    watch = start_watch(server, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    out = Lines(watch.stdout)
    try:
        out.wait_for("user.1")
        client.set("user.2", 2)
        client.delete("user.1")
        out.wait_for('{"user.2":2}')
        stop_with_ctrl_c(watch)
    finally:
        watch.kill()
        watch.wait()
    assert [json.loads(line) for line in out.lines] == [
        {"user.1": {"name": "Ada"}}, {"user.1": {"name": "Ada"}, "user.2": 2}, {"user.2": 2}]


def test_watch_redraws_the_state_in_place_on_a_terminal(server: Server, tmp_path: Path) -> None:
    client = MemoryClient(server.url)
    client.set("user.1", "first")
    screen, terminal = pty.openpty()
    os.set_blocking(screen, False)
    watch = start_watch(server, tmp_path, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    written = bytearray()

    def read_until(text: bytes) -> None:
        def seen() -> bool:
            try:
                written.extend(os.read(screen, 65536))
            except OSError:
                pass
            return text in written
        wait_until(seen, timeout=30, message=f"{text!r} on the terminal")
    try:
        read_until(b"user.1  \"first\"")
        client.set("user.1", "second")
        read_until(b"user.1  \"second\"")
        drawn = written.split(REDRAW)
        assert len(drawn) >= 3 and b"first" not in drawn[-1]  # drawn again, not appended
    finally:
        watch.kill()
        watch.wait()
        os.close(screen)

