"""Drive the real AgentField Python SDK (agentfield, pinned in requirements.txt) for the tests.

Runs under the SDK's own interpreter (``.venv-agentfield/bin/python``), never the service's:
``tests/test_agentfield.py`` starts it as a subprocess and talks JSON lines with it.

    driver.py '{"base_url": "http://127.0.0.1:8080", "api_key": null,
                "context": {"run_id": …, "workflow_id": …, "session_id": …, "actor_id": …,
                            "agent_node_id": …}}'

It builds the objects an agent gets (``AgentFieldClient``, ``ExecutionContext``, ``MemoryClient``,
``MemoryEventClient``, ``MemoryInterface``), prints ``{"ready": …}``, then reads one command per
line on stdin:

* ``{"id": N, "op": "call", "target": T, "method": M, "args": [...], "kwargs": {...}}`` calls
  ``T.M(*args, **kwargs)`` (awaited when it is a coroutine) and answers
  ``{"id": N, "ok": true, "value": …}`` or ``{"id": N, "ok": false, "error": "<exception class>",
  "message": "…"}``. ``T`` is ``"mem"`` (the MemoryInterface), ``"client"`` (the MemoryClient),
  ``"events"`` (the MemoryEventClient), ``"global"`` (``mem.global_scope``) or
  ``["session"|"actor"|"workflow", id]`` (``mem.session(id)`` …). An argument
  ``{"__datetime__": "<ISO 8601>"}`` is passed as a ``datetime``.
* ``{"id": N, "op": "on_change", "target": T, "patterns": P, "label": L}`` decorates a callback
  with ``T.on_change(P)`` (``T`` as above, ``"events"`` included);
  ``{"id": N, "op": "subscribe", "patterns": P, "label": L, "scope": …, "scope_id": …}`` calls
  ``MemoryEventClient.subscribe``. Every time such a callback runs, the driver prints
  ``{"callback": L, "event": <MemoryChangeEvent as a dict>}``.
* ``{"id": N, "op": "state"}`` answers whether the event client's socket is open.
* ``{"id": N, "op": "open", "name": A, "config": {...}}`` builds another set of objects, with
  the start's config updated by that one (another key, other ids); a command with
  ``"as": A`` uses them instead of the first.

Only this protocol goes to stdout: the SDK's own log lines are sent to stderr. The driver exits
when stdin closes, whatever the SDK's reconnect tasks are doing.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import traceback
from datetime import datetime
from importlib.metadata import version
from typing import Any

# The protocol gets its own copy of stdout; everything else printing to fd 1 (the SDK's logger
# mirrors to stdout) lands on stderr instead.
PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr

from agentfield.client import AgentFieldClient  # noqa: E402
from agentfield.execution_context import ExecutionContext  # noqa: E402
from agentfield.memory import MemoryClient, MemoryInterface  # noqa: E402
from agentfield.memory_events import MemoryEventClient  # noqa: E402


def emit(message: dict[str, Any]) -> None:
    PROTOCOL.write(json.dumps(message, default=repr) + "\n")
    PROTOCOL.flush()


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    return value


def argument(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__datetime__"}:
        return datetime.fromisoformat(value["__datetime__"])
    return value


class Driver:
    def __init__(self, config: dict[str, Any]) -> None:
        base_url, api_key = config["base_url"], config.get("api_key")
        context = config.get("context", {})
        self.context = ExecutionContext(
            run_id=context.get("run_id", "run-1"),
            execution_id=context.get("execution_id", "exec-1"),
            agent_instance=None, reasoner_name="compat-test",
            agent_node_id=context.get("agent_node_id"),
            workflow_id=context.get("workflow_id"),
            session_id=context.get("session_id"),
            actor_id=context.get("actor_id"),
        )
        self.af = AgentFieldClient(base_url=base_url, api_key=api_key)
        self.memory_client = MemoryClient(self.af, self.context,
                                          agent_node_id=context.get("agent_node_id"))
        self.events = MemoryEventClient(base_url, self.context, api_key=api_key)
        self.mem = MemoryInterface(self.memory_client, self.events)

    def target(self, name: Any) -> Any:
        if isinstance(name, list):
            scope, scope_id = name
            return getattr(self.mem, scope)(scope_id)  # session(id) / actor(id) / workflow(id)
        return {"mem": self.mem, "client": self.memory_client, "events": self.events,
                "global": self.mem.global_scope}[name]

    def callback(self, label: str) -> Any:
        async def on_event(event: Any) -> None:
            emit({"callback": label, "event": jsonable(event)})
        return on_event

    async def handle(self, command: dict[str, Any]) -> Any:
        op = command["op"]
        if op == "call":
            method = getattr(self.target(command["target"]), command["method"])
            result = method(*map(argument, command.get("args", [])),
                            **{k: argument(v) for k, v in command.get("kwargs", {}).items()})
            if asyncio.iscoroutine(result):
                result = await result
            return jsonable(result)
        if op == "on_change":
            self.target(command["target"]).on_change(command["patterns"])(
                self.callback(command["label"]))
            return None
        if op == "subscribe":
            self.events.subscribe(command["patterns"], self.callback(command["label"]),
                                  scope=command.get("scope"), scope_id=command.get("scope_id"))
            return None
        if op == "state":
            return {"connected": self.events._is_connected(),
                    "reconnect_attempts": self.events._reconnect_attempts}
        raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    config = json.loads(sys.argv[1])
    drivers = {"default": Driver(config)}
    emit({"ready": True, "agentfield": version("agentfield"), "websockets": version("websockets"),
          "httpx": version("httpx"), "python": sys.version.split()[0]})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:  # the test is done: leave now, whatever the SDK's tasks are doing
            PROTOCOL.flush()
            os._exit(0)
        if not line.strip():
            continue
        command = json.loads(line)
        try:
            if command["op"] == "open":  # another agent in this process, e.g. without the key
                drivers[command["name"]] = Driver({**config, **command["config"]})
                value = None
            else:
                value = await drivers[command.get("as", "default")].handle(command)
        except Exception as exc:  # the test decides what an exception means
            emit({"id": command.get("id"), "ok": False, "error": type(exc).__name__,
                  "message": str(exc), "traceback": traceback.format_exc()})
        else:
            emit({"id": command.get("id"), "ok": True, "value": value})


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)  # reconnect tasks and the executor's reader thread must not keep it alive
