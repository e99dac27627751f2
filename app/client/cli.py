"""``python -m app.client …`` (or ``flask --app wsgi events …``): follow a running server's
changes, and read or write keys, from a shell. Every command talks to a server over HTTP
(``--url``), so none opens a database."""
from __future__ import annotations

import contextlib
import functools
import json
import shutil
import sys
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import click

from ..wire import SCOPES, Control

if TYPE_CHECKING:  # the client (and requests under it) loads when a command runs, not with
    from .client import MemoryClient  # the server that registers these commands
    from .stream import StreamStatus

DEFAULT_URL = "http://127.0.0.1:8080"
MIN_VALUE_WIDTH = 20
# Used when the output is not a terminal: wide enough for a log file, still one line.
PIPE_COLUMNS = 160

events_cli = click.Group("events", help="Talk to a running memory-events server: tail or watch "
                                        "its changes, set, get, delete and list keys.")


def _with_client(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--url`` and ``--api-key``, hand the command a client, and turn the client's errors
    into a one-line message with exit code 1 instead of a traceback."""

    @click.option("--url", envvar="MEMORY_URL", default=DEFAULT_URL, show_default=True,
                  help="The server's base URL (or $MEMORY_URL).")
    @click.option("--api-key", envvar="MEMORY_API_KEY",
                  help="API key, when the server requires one (or $MEMORY_API_KEY).")
    @functools.wraps(command)
    def run(url: str, api_key: str | None, **kwargs: Any) -> Any:
        from .client import MemoryClient
        from .errors import MemoryClientError
        try:
            client = MemoryClient(url, api_key=api_key)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
        with client:
            try:
                return command(client, **kwargs)
            except MemoryClientError as exc:
                raise click.ClickException(str(exc)) from None

    return run


def _scope_options(required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option("--scope-id", help="The scope's id (not needed for global).")(
            command)
        return click.option("--scope", type=click.Choice(SCOPES), required=required,
                            help="Which scope.")(command)
    return add


def _say(message: str) -> None:
    """Notices go to stderr, so stdout stays one line per event for a pipe."""
    click.echo(f"-- {message}", err=True)


def _print(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _when(timestamp: str) -> str:
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def event_line(event: dict, columns: int | None) -> str:
    """Time, action, scope/scope id, key and the value, cut to fit ``columns`` (``None``: whole).

    A delete shows the value it removed. JSON escapes keep control characters in keys and
    values from breaking the line.
    """
    key = event["key"] if event["key"].isprintable() else _compact(event["key"])
    prefix = (f"{_when(event['timestamp'])}  {event['action']:<6}  "
              f"{event['scope']}/{event['scope_id']}  {key}  ")
    if event["action"] == "delete":
        value = f"(deleted; was {_compact(event.get('previous_data'))})"
    else:
        value = _compact(event.get("data"))
    if columns is not None:
        value = _shorten(value, max(MIN_VALUE_WIDTH, columns - len(prefix)))
    return prefix + value


def _status_text(status: StreamStatus) -> str:
    if status.state == "disconnected":
        return f"disconnected: {status.reason}; reconnecting in {status.retry_in:.1f}s"
    return f"reconnected; resuming after event {status.last_event_id}"


def _say_status(status: StreamStatus) -> None:
    _say(_status_text(status))


def _say_reset(reset: dict) -> None:
    _say(f"the server no longer holds the events after the resume point "
         f"({reset.get('reason')}; oldest is {reset.get('oldest_id')}): changes were missed; "
         f"reload with 'list', or follow the state with 'watch'")


@events_cli.command("tail")
@click.option("--patterns", "-p", multiple=True,
              help="Key globs, comma-separated or repeated, e.g. 'user.*'.")
@_scope_options()
@click.option("--last-event-id", help="Start after this event id (replaying what came after) "
                                      "instead of now.")
@click.option("--json", "as_json", is_flag=True, help="Print each event's JSON, one per line.")
@click.option("--full", is_flag=True, help="Print whole values instead of shortening them.")
@_with_client
def tail(client: MemoryClient, patterns: tuple[str, ...], scope: str | None,
         scope_id: str | None, last_event_id: str | None, as_json: bool, full: bool) -> None:
    """Print every change as it happens, one line each, until Ctrl-C.

    Reconnects by itself (and says so on stderr) when the connection drops or the server
    restarts, resuming where it left off.
    """
    columns = None if full else shutil.get_terminal_size((PIPE_COLUMNS, 24)).columns
    try:
        with client.subscribe(list(patterns), scope, scope_id, last_event_id,
                              on_status=_say_status) as stream:
            _say(f"connected to {client.base_url}; waiting for changes (Ctrl-C stops)")
            for event in stream:
                if as_json:
                    click.echo(_compact(event))
                elif event.get("type") == Control.RESET:
                    _say_reset(event)
                else:
                    click.echo(event_line(event, columns))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a tail ends: no traceback, exit code 0


#: the least time between two drawings of a watch: the changes in between are drawn together
REDRAW_SECONDS = 0.1
#: cursor to the top left; clear the rest of the line; clear the rest of the screen
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def _key_name(key: str | tuple[str, ...]) -> str:
    """A watch of several scopes keys its state by ``(scope, scope_id, key)``."""
    return key if isinstance(key, str) else "/".join(key)


def state_lines(state: dict, columns: int | None) -> list[str]:
    """One line per key, sorted, with its value cut to fit ``columns`` (``None``: whole)."""
    lines = []
    for key in sorted(state, key=str):
        name = _key_name(key)
        name = name if name.isprintable() else _compact(name)
        value = _compact(state[key])
        if columns is not None:
            value = _shorten(value, max(MIN_VALUE_WIDTH, columns - len(name) - 2))
        lines.append(f"{name}  {value}")
    return lines


def screen(state: dict | None, status: str, columns: int, rows: int) -> str:
    """A whole terminal screen of a watch, drawn over the last one from the top left: the
    status, then one line per key (``None``: the snapshot is not in yet), no line longer than
    ``columns`` and no more lines than ``rows``, so nothing scrolls."""
    if state is None:
        lines = [status, "(waiting for the current state)"]
    else:
        keys = state_lines(state, columns) or ["(no keys)"]
        room = max(1, rows - 1)
        if len(keys) > room:
            keys = keys[:room - 1] + [f"… and {len(keys) - room + 1} more keys"]
        lines = [f"{len(state)} key{'' if len(state) == 1 else 's'} · {status}", *keys]
    return (HOME + (CLEAR_LINE + "\n").join(_shorten(line, columns) for line in lines[:rows])
            + CLEAR_BELOW)


class _Screen:
    """A watch drawn in place on a terminal.

    A thread follows the watch while this one draws, at most every ``REDRAW_SECONDS``: a burst
    of changes costs one drawing, and the last change is always drawn, even when none follows
    it. The connection's status is part of the drawing, so no notice scrolls the state away.
    """

    def __init__(self, status: str) -> None:
        self._changed = threading.Condition()
        self._status = status
        self._state: dict | None = None
        self._failure: BaseException | None = None
        self._stale = True

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        with self._changed:
            yield
            self._stale = True
            self._changed.notify()

    def on_status(self, status: StreamStatus) -> None:
        with self._changing():
            self._status = _status_text(status)

    def follow(self, states: Iterable[dict]) -> None:
        """The watching thread: a failure (a refused reconnect) ends the drawing too."""
        try:
            for state in states:
                with self._changing():
                    self._state = state
        except Exception as exc:
            with self._changing():
                self._failure = exc

    def draw(self) -> None:
        """Draw each new state until Ctrl-C or a failure, which is raised here."""
        drawn_at = -REDRAW_SECONDS
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stale)
                if self._failure is not None:
                    raise self._failure
            time.sleep(max(0.0, drawn_at + REDRAW_SECONDS - time.monotonic()))
            with self._changed:
                self._stale = False
                status = self._status
                # ``dict`` copies in one step under the GIL (its keys are strings or tuples
                # of strings, which run no Python code), while the watching thread may be
                # changing it; a change the copy missed or caught halfway marks the screen
                # stale again once it is whole, and is drawn next.
                state = None if self._state is None else dict(self._state)
            columns, rows = shutil.get_terminal_size()
            click.echo(screen(state, status, columns, rows), nl=False)
            drawn_at = time.monotonic()


@events_cli.command("watch")
@click.option("--patterns", "-p", multiple=True,
              help="Key globs, comma-separated or repeated, e.g. 'user.*'.")
@_scope_options()
@_with_client
def watch(client: MemoryClient, patterns: tuple[str, ...], scope: str | None,
          scope_id: str | None) -> None:
    """Show the current value of every matching key, kept up to date, until Ctrl-C.

    On a terminal the state is drawn in place, at most ten times a second, cut to the
    window, with the connection's status on top; into a pipe, each new state is printed as
    one line of JSON, and notices go to stderr.
    """
    try:
        if not sys.stdout.isatty():
            with client.watch(list(patterns), scope, scope_id,
                              on_status=_say_status) as states:
                for state in states:
                    click.echo(_compact({_key_name(key): value for key, value in
                                         state.items()}))
            return
        drawing = _Screen(f"connected to {client.base_url} (Ctrl-C stops)")
        # Left open on purpose: the watching thread is in it until the command ends.
        states = client.watch(list(patterns), scope, scope_id, on_status=drawing.on_status)
        threading.Thread(target=drawing.follow, args=(states,), daemon=True).start()
        drawing.draw()
    except KeyboardInterrupt:
        pass


def _json_argument(text: str) -> Any:
    source = sys.stdin.read() if text == "-" else text
    try:
        return json.loads(source)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}); a string needs quotes: "
                                 f"'\"text\"'", param_hint="JSON_VALUE") from None


@events_cli.command("set")
@click.argument("key")
@click.argument("value", metavar="JSON_VALUE")
@_scope_options()
@_with_client
def set_key(client: MemoryClient, key: str, value: str, scope: str | None,
            scope_id: str | None) -> None:
    """Store JSON_VALUE under KEY ('-' reads the JSON from stdin); prints the stored record."""
    _print(client.set(key, _json_argument(value), scope, scope_id))


@events_cli.command("get")
@click.argument("key")
@_scope_options()
@_with_client
def get_key(client: MemoryClient, key: str, scope: str | None, scope_id: str | None) -> None:
    """Print the value under KEY as JSON; exit code 1 when there is none."""
    _print(client.record(key, scope, scope_id)["data"])


@events_cli.command("delete")
@click.argument("key")
@_scope_options()
@_with_client
def delete_key(client: MemoryClient, key: str, scope: str | None, scope_id: str | None) -> None:
    """Remove KEY (a key that is not there is no error)."""
    client.delete(key, scope, scope_id)


@events_cli.command("list")
@_scope_options(required=True)
@_with_client
def list_keys(client: MemoryClient, scope: str, scope_id: str | None) -> None:
    """Print every record of a scope as a JSON array."""
    _print(client.list(scope, scope_id))
