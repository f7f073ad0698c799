"""Data ingress: payloads from the data ports batched per source for the routers, with backpressure and drop reports.

``Ingress`` is given the replica (which sources are known), the gateway's counters, and the data plane's submit and
paused: it runs and is tested without sockets. ``send_to_router`` is the plane's send on the gateway's data socket.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Callable

import zmq
import zmq.asyncio

from ..core.replica import StateReplica
from .connection import HOLD_BACKPRESSURE, Connection
from .dataplane import RouterBusy, RouterGone

log = logging.getLogger(__name__)

ACTIVITY_REPORT_INTERVAL_S = 5.0
EXAMPLE_SOURCES_SHOWN = 3
DROP_REASONS = (("unknown_source", "from unknown sources"), ("no_route", "with no route"))


class Ingress:
    """Unknown or unrouted sources are counted and reported once per interval; a slow router holds its sources'
    reads."""

    def __init__(self, replica: StateReplica, counters: dict[str, int], submit: Callable[[str, list[bytes]], None],
                 paused: Callable[[str], bool]) -> None:
        self.replica = replica
        self.counters = counters
        self.submit = submit  # the data plane's: one source's payloads, in order, to its router
        self.paused = paused  # the data plane's: whether the routers fell behind on a source
        self.routed_sources: set[str] = set()
        self.outbox: dict[str, list[bytes]] = {}
        self.held: dict[str, set[Connection]] = {}  # paused source -> connections not read meanwhile
        self.sources_seen: set[str] = set()  # known peripherals that sent data since the last heartbeat
        self.reported = {reason: 0 for reason, _ in DROP_REASONS}
        self.recent_sources: dict[str, set[str]] = {reason: set() for reason, _ in DROP_REASONS}
        self.next_report = time.monotonic() + ACTIVITY_REPORT_INTERVAL_S

    def routes_changed(self) -> None:
        """The replica's routes changed: which sources have a route (by uuid, known as a peripheral or not)."""
        self.routed_sources = {route["incoming"] for route in self.replica.routes.values()}

    def ingest(self, source: str, payloads: list[bytes], conn: Connection | None = None) -> None:
        """Host: count payloads and queue them for the routers, unless the source is unknown or has no route.

        Payloads of one source that arrive within one event-loop pass (from any connection, in arrival
        order) leave as one batch: a connection per message costs one zmq send per pass, not per message.
        """
        count = len(payloads)
        self.counters["payloads_in"] += count
        if source not in self.routed_sources:  # a route names its source by uuid, known as a peripheral or not
            if source in self.replica.peripherals:
                self.sources_seen.add(source)
                self._dropped("no_route", source, count)
            else:
                self._dropped("unknown_source", source, count)
        else:
            if not self.outbox:
                asyncio.get_running_loop().call_soon(self._flush_outbox)
            self.outbox.setdefault(source, []).extend(payloads)
            if conn is not None and self.paused(source):
                conn.hold(HOLD_BACKPRESSURE)
                self.held.setdefault(source, set()).add(conn)

    def source_paused(self, source: str, paused: bool) -> None:
        """DataPlane: the routers fell behind on source (its connections stop being read) or caught up."""
        if not paused:
            for conn in self.held.pop(source, ()):
                conn.release(HOLD_BACKPRESSURE)

    def _flush_outbox(self) -> None:
        outbox, self.outbox = self.outbox, {}
        self.sources_seen.update(outbox)  # once per event-loop pass, never per payload
        for source, payloads in outbox.items():
            self.submit(source, payloads)

    def _dropped(self, reason: str, source: str, count: int) -> None:
        self.counters[reason] += count
        if len(self.recent_sources[reason]) < EXAMPLE_SOURCES_SHOWN:
            self.recent_sources[reason].add(source[:36])

    def drops_unreported(self) -> bool:
        """Whether a drop report is owed (only then is its timer worth waking for)."""
        return any(self.counters[reason] != self.reported[reason] for reason, _ in DROP_REASONS)

    def report_drops(self) -> None:
        """One activity line per interval for data dropped at the gateway (never one per message)."""
        now = time.monotonic()
        if now < self.next_report:
            return
        self.next_report = now + ACTIVITY_REPORT_INTERVAL_S
        parts = []
        for reason, label in DROP_REASONS:
            new = self.counters[reason] - self.reported[reason]
            if new:
                parts.append(f"{new} lines {label} ({', '.join(sorted(self.recent_sources[reason]))})")
            self.reported[reason] = self.counters[reason]
            self.recent_sources[reason] = set()
        if parts:
            log.warning("dropped in the last %.0fs: %s", ACTIVITY_REPORT_INTERVAL_S, "; ".join(parts))


def send_to_router(sock: zmq.asyncio.Socket, identity: bytes, body: bytes) -> None:
    """DataPlane's send: never blocks; a full queue or a vanished router raises for the plane to handle."""
    future = sock.send_multipart([identity, body], flags=zmq.NOBLOCK)
    exc = future.exception()
    if exc is None:
        return
    if isinstance(exc, zmq.Again):
        raise RouterBusy()
    if isinstance(exc, zmq.ZMQError) and exc.errno == errno.EHOSTUNREACH:
        raise RouterGone()
    raise exc
