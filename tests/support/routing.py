"""Routing under test: sources that keep a data-port connection open and send numbered lines, sinks that record
their order, routes, and the per-route counters of /routes info."""
from __future__ import annotations

import re
import socket
import uuid as uuidlib
from typing import Any

from actors.router.sinks import MODE_STREAM, Chunk, SinkWorker
from tests.support.fakes import LISTEN_BACKLOG, LineSink, register
from tests.support.instances import Instance, free_port, wait_until

DELIVERY_TIMEOUT_S = 15.0
SOURCE_CONNECT_TIMEOUT_S = 5.0


class Source:
    """A registered source with one data-port connection kept open; sends numbered lines."""

    def __init__(self, instance: Instance, name: str, uuid: str | None = None) -> None:
        self.name = name
        self.uuid = uuid or str(uuidlib.uuid4())
        ack = register(instance.command_port, name, self.uuid, free_port())
        assert ack.startswith("/ack "), ack
        self.conn = socket.create_connection(("127.0.0.1", int(ack.split()[1])), timeout=SOURCE_CONNECT_TIMEOUT_S)
        self.conn.sendall(self.uuid.encode() + b"\n")
        self.sent = 0

    def send(self, count: int) -> None:
        """The next count numbers, one line each."""
        first = self.sent + 1
        self.sent += count
        self.conn.sendall(b"".join(b"%d\n" % n for n in range(first, self.sent + 1)))

    def warm_up(self, sink: LineSink) -> None:
        """Send "warm" until the sink has one: the gateway and the source's router know the route now."""
        def arrived() -> bool:
            with sink.lock:
                if b"warm" in sink.lines:
                    return True
            self.conn.sendall(b"warm\n")
            return False
        wait_until(arrived, DELIVERY_TIMEOUT_S, 0.1, f"a first line from {self.name}")

    def close(self) -> None:
        self.conn.close()


def add_sink(instance: Instance, name: str, delivery: str = "stream", backlog: int = LISTEN_BACKLOG) -> LineSink:
    """A registered sink that keeps arrival order across connections (see LineSink's multiplexed)."""
    sink = LineSink(backlog=backlog, multiplexed=True).start()
    ack = register(instance.command_port, name, str(uuidlib.uuid4()), sink.port)
    assert ack.startswith("/ack "), ack
    if delivery != "message":
        assert "stream" in instance.command(f"/delivery {name} {delivery}")
    return sink


def add_route(instance: Instance, name: str, incoming: str, outgoing: str) -> None:
    reply = instance.command(f"/routes add {name} {incoming} {outgoing}")
    assert reply.strip() == f"Route '{name}' added successfully."


def assert_in_order_without_loss(numbers: list[int], count: int) -> None:
    """1..count all there; first arrivals increase (a resend after a router stops may repeat, never reorder)."""
    first_seen: list[int] = []
    seen: set[int] = set()
    for number in numbers:
        if number not in seen:
            seen.add(number)
            first_seen.append(number)
    assert first_seen == list(range(1, count + 1)), \
        f"order broken or lines lost: first wrong at {_first_mismatch(first_seen, count)}"


def _first_mismatch(numbers: list[int], count: int) -> Any:
    for index, (got, want) in enumerate(zip(numbers, range(1, count + 1))):
        if got != want:
            return {"index": index, "got": numbers[max(0, index - 3):index + 3], "want": want}
    return {"length": len(numbers), "want": count}


def running_routers(instance: Instance) -> list[str]:
    children = instance.status()["children"]
    return sorted(c["name"] for c in children
                  if c["name"].startswith("router") and c["state"] == "running" and c["ready"])


def register_sink(instance: Instance, name: str, port: int, mode: str) -> None:
    """Register a sink listening on port, in delivery mode `mode`."""
    ack = register(instance.command_port, name, str(uuidlib.uuid4()), port)
    assert ack.startswith("/ack "), ack
    if mode == MODE_STREAM:
        assert "stream" in instance.command(f"/delivery {name} stream")


def route_counters(instance: Instance) -> dict[str, dict[str, int]]:
    """Messages and Dropped per route, as /routes info shows them."""
    counters: dict[str, dict[str, int]] = {}
    name = None
    for line in instance.command("/routes info").splitlines():
        if line.startswith("Route Name: "):
            name = line.split(": ", 1)[1].strip()
        found = re.search(r"Messages: (\d+), Bytes: \d+, Dropped: (\d+)", line)
        if found and name is not None:
            counters[name] = {"messages": int(found.group(1)), "dropped": int(found.group(2))}
    return counters


def stop_quietly(thing: Any) -> None:
    """Stop a fake, a sink or a source (None: nothing was started) in a finally block."""
    if thing is None:
        return
    try:
        thing.stop() if hasattr(thing, "stop") else thing.close()
    except OSError:
        pass


class Reports:
    """What a SinkWorker reports (its report callback): chunks done and events (down, up, ...), in order."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.events: list[str] = []

    def __call__(self, worker: SinkWorker, chunks: list[Chunk], event: str | None) -> None:
        self.chunks += chunks
        if event:
            self.events.append(event)
