"""Data ingress: payloads from the data ports batched per source for the routers, with backpressure and drop reports.

A mixin of ``Gateway`` (the Host a connection calls): it uses the gateway's replica, counters, data plane and data socket.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time

import zmq

from .connection import HOLD_BACKPRESSURE, Connection
from .dataplane import RouterBusy, RouterGone

log = logging.getLogger(__name__)

ACTIVITY_REPORT_INTERVAL_S = 5.0
EXAMPLE_SOURCES_SHOWN = 3


class Ingress:
    """Unknown or unrouted sources are counted and reported once per interval; a slow router holds its sources' reads."""

    def ingest(self, source: str, payloads: list[bytes], conn: Connection | None = None) -> None:
        """Host: count payloads and queue them for the routers, unless the source is unknown or has no route.

        Payloads of one source that arrive within one event-loop pass (from any connection, in arrival
        order) leave as one batch: a connection per message costs one zmq send per pass, not per message.
        """
        count = len(payloads)
        self.counters["payloads_in"] += count
        if source not in self.routed_sources:  # a route names its source by uuid, known as a peripheral or not (as the original)
            if source in self.replica.peripherals:
                self.sources_seen.add(source)
                self._dropped("no_route", source, count)
            else:
                self._dropped("unknown_source", source, count)
        else:
            if not self.outbox:
                asyncio.get_running_loop().call_soon(self._flush_outbox)
            self.outbox.setdefault(source, []).extend(payloads)
            if conn is not None and self.plane.paused(source):
                conn.hold(HOLD_BACKPRESSURE)
                self.held.setdefault(source, set()).add(conn)

    def _source_paused(self, source: str, paused: bool) -> None:
        """DataPlane: the routers fell behind on source (its connections stop being read) or caught up."""
        if not paused:
            for conn in self.held.pop(source, ()):
                conn.release(HOLD_BACKPRESSURE)

    def _flush_outbox(self) -> None:
        outbox, self.outbox = self.outbox, {}
        self.sources_seen.update(outbox)  # once per event-loop pass, never per payload
        for source, payloads in outbox.items():
            self.plane.submit(source, payloads)

    def _dropped(self, reason: str, source: str, count: int) -> None:
        self.counters[reason] += count
        if len(self.recent_sources[reason]) < EXAMPLE_SOURCES_SHOWN:
            self.recent_sources[reason].add(source[:36])

    def _drops_unreported(self) -> bool:
        """Whether a drop report is owed (only then is its timer worth waking for)."""
        return any(self.counters[reason] != self.reported[reason] for reason in ("unknown_source", "no_route"))

    def _report_drops(self) -> None:
        """One activity line per interval for data dropped at the gateway (never one per message)."""
        now = time.monotonic()
        if now < self.next_report:
            return
        self.next_report = now + ACTIVITY_REPORT_INTERVAL_S
        parts = []
        for reason, label in (("unknown_source", "from unknown sources"), ("no_route", "with no route")):
            new = self.counters[reason] - self.reported[reason]
            if new:
                parts.append(f"{new} lines {label} ({', '.join(sorted(self.recent_sources[reason]))})")
            self.reported[reason] = self.counters[reason]
            self.recent_sources[reason] = set()
        if parts:
            log.warning("dropped in the last %.0fs: %s", ACTIVITY_REPORT_INTERVAL_S, "; ".join(parts))

    def _send_to_router(self, identity: bytes, body: bytes) -> None:
        """DataPlane's send: never blocks; a full queue or a vanished router raises for the plane to handle."""
        future = self.data.send_multipart([identity, body], flags=zmq.NOBLOCK)
        exc = future.exception()
        if exc is None:
            return
        if isinstance(exc, zmq.Again):
            raise RouterBusy()
        if isinstance(exc, zmq.ZMQError) and exc.errno == errno.EHOSTUNREACH:
            raise RouterGone()
        raise exc
