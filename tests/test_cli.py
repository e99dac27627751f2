"""The terminal tools as a user runs them, ``python -m app.client …`` (or ``flask --app wsgi
events …``): a subprocess talking to a real server, into pipes or onto a pseudo-terminal."""
from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable

from app.client import MemoryClient

from .conftest import ROOT, Server, free_port, wait_until

CLI = [sys.executable, "-m", "app.client"]
FLASK = [sys.executable, "-m", "flask", "--app", "wsgi", "events"]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z  (\S+)\s+(\S+)  (\S+)  (.*)$")


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without its ``MEMORY_*`` settings, and a database path the
    commands must never create: they talk to the server, not to a store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_")}
    return {**env, "MEMORY_DB_URL": f"sqlite:///{tmp_path}/never-created.db", **extra}


def run(tmp_path: Path, *args: str, stdin: str | None = None, entry: list[str] = CLI,
        **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(entry + list(args), cwd=ROOT, env=cli_env(tmp_path, **env),
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
        CLI + ["tail", "--url", server.url, "--patterns", "user.*"], cwd=ROOT,
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


def test_flask_offers_the_same_commands(server: Server, tmp_path: Path) -> None:
    def commands(entry: list[str]) -> list[str]:
        return re.findall(r"^  (\w+)  ", run(tmp_path, "--help", entry=entry).stdout,
                          re.MULTILINE)

    assert commands(FLASK) == commands(CLI) == ["delete", "get", "list", "set", "tail", "watch"]
    assert run(tmp_path, "set", "k", "[1]", "--url", server.url, entry=FLASK).returncode == 0
    assert json.loads(run(tmp_path, "get", "k", "--url", server.url).stdout) == [1]


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


def start_watch(server: Server, tmp_path: Path, columns: int = 80, rows: int = 24,
                **popen: object) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["watch", "--url", server.url, "--patterns", "user.*",
                                   "--scope", "global"], cwd=ROOT,
                            env=cli_env(tmp_path, COLUMNS=str(columns), LINES=str(rows)),
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


#: a drawing starts at the top left; each line clears what is left of the one it covers, and
#: the last clears the rest of the screen
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


class Terminal:
    """A pseudo-terminal for a command to draw on, and what it drew."""

    def __init__(self) -> None:
        self._screen, self.device = pty.openpty()
        os.set_blocking(self._screen, False)
        self._written = bytearray()

    @property
    def text(self) -> str:
        with contextlib.suppress(OSError):  # nothing more yet, or the command has ended
            while chunk := os.read(self._screen, 65536):
                self._written.extend(chunk)
        return self._written.decode("utf-8", "replace")

    def screens(self) -> list[list[str]]:
        """Each whole drawing so far, as its lines (the terminal sends each newline as CRLF)."""
        return [drawing.removesuffix(CLEAR_BELOW).split(CLEAR_LINE + "\r\n")
                for drawing in self.text.split(HOME)[1:] if drawing.endswith(CLEAR_BELOW)]

    def wait_for(self, check: Callable[[list[str]], bool], what: str) -> list[str]:
        """The latest drawing, once it passes ``check``."""
        def drawn() -> list[str] | None:
            screens = self.screens()
            return screens[-1] if screens and check(screens[-1]) else None
        return wait_until(drawn, timeout=30, message=what)  # type: ignore[return-value]

    def close(self) -> None:
        os.close(self._screen)


def watch_on(terminal: Terminal, server: Server, tmp_path: Path,
             **size: int) -> subprocess.Popen:
    watch = start_watch(server, tmp_path, stdin=terminal.device, stdout=terminal.device,
                        stderr=terminal.device, **size)
    os.close(terminal.device)
    return watch


def test_watch_draws_in_place_within_the_terminal_with_the_status_on_top(
        server_factory, tmp_path: Path) -> None:
    server: Server = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    client = MemoryClient(server.url)
    for n in range(1, 6):
        client.set(f"user.{n}", "x" * 100 if n == 1 else n)
    terminal = Terminal()
    watch = watch_on(terminal, server, tmp_path, columns=40, rows=4)
    try:
        first = terminal.wait_for(lambda lines: lines[0].startswith("5 keys · connected"),
                                  "the state")
        assert first[1].startswith('user.1  "xxx') and first[1].endswith("…")
        assert first[2:] == ["user.2  2", "… and 3 more keys"]
        client.set("user.2", "second")
        terminal.wait_for(lambda lines: lines[2] == 'user.2  "second"', "the change")

        server.stop()
        terminal.wait_for(lambda lines: "disconnected: " in lines[0], "the drop")
        server.start()
        terminal.wait_for(lambda lines: "reconnected; resuming" in lines[0], "the reconnect")
        client.delete("user.1")
        terminal.wait_for(lambda lines: lines[0].startswith("4 keys")
                          and lines[1] == 'user.2  "second"', "the change after it")
        stop_with_ctrl_c(watch)
    finally:
        watch.kill()
        watch.wait()
        terminal.close()
    before, *drawings = terminal.text.split(HOME)
    assert before == "" and all(drawing.endswith(CLEAR_BELOW) for drawing in drawings), (
        "something was written between the drawings")
    assert all(len(lines) <= 4 and max(map(len, lines)) <= 40 for lines in terminal.screens())


def test_watch_draws_a_burst_of_changes_at_most_ten_times_a_second(server: Server,
                                                                    tmp_path: Path) -> None:
    client = MemoryClient(server.url)
    client.set("user.count", 0)
    terminal = Terminal()
    watch = watch_on(terminal, server, tmp_path)
    try:
        terminal.wait_for(lambda lines: lines[1:] == ["user.count  0"], "the state")
        drawn_before = len(terminal.screens())
        started = time.monotonic()
        for n in range(1, 201):
            client.set("user.count", n)
        # however fast the changes came, the last is drawn, even with none after it
        terminal.wait_for(lambda lines: lines[1:] == ["user.count  200"], "the last change")
        elapsed = time.monotonic() - started
        drawings = len(terminal.screens()) - drawn_before
    finally:
        watch.kill()
        watch.wait()
        terminal.close()
    assert drawings <= elapsed / 0.1 + 2, f"{drawings} drawings in {elapsed:.2f} s"

