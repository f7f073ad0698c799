"""Taps (introspection): publish a route's or a source's payloads only while someone subscribed to its tap topic.

An XPUB connected to the bus (given to ``Taps``) tells which topics are watched; Tap messages are dropped when
the bus is full, so a watcher never slows routing. The same socket carries the sampled latency traces.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import zmq

from ..core.protocol import TAP_PERIPHERAL, TAP_ROUTE, DataBatch, Tap, Topic, Trace, encode, tap_topic


class Taps:
    """Which routes and sources are watched (and whether a latency trace is), and publishing what they carry."""

    def __init__(self, name: str, tables: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> None:
        self.name = name
        self.tables = tables  # () -> (routes, peripherals) of the replica: what a subscription can name
        self.sock: zmq.Socket | None = None  # the XPUB, once connected
        self.subscriptions: set[bytes] = set()
        self.tracing = False  # someone subscribes to Topic.TRACE: sample batches for the latency breakdown
        self.routes: set[str] = set()
        self.sources: set[str] = set()
        self.published = 0

    def read_subscriptions(self) -> None:
        """XPUB tells us (un)subscriptions as [1|0]+topic; only tap topics count (a catch-all b"" does not)."""
        if self.sock is None:
            return
        changed = False
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame and frame[1:] == Topic.TRACE.value:
                self.tracing = frame[0] == 1
                continue
            if not frame or not frame[1:].startswith(Topic.TAP.value):
                continue
            if frame[0] == 1:
                self.subscriptions.add(frame[1:])
            else:
                self.subscriptions.discard(frame[1:])
            changed = True
        if changed:
            self.update()

    def update(self) -> None:
        """Which routes and sources are watched now (a subscription may be a prefix: all routes)."""
        subs = self.subscriptions
        if not subs:
            self.routes, self.sources = set(), set()
            return
        routes, peripherals = self.tables()
        self.routes = {name for name in routes if _watched(subs, tap_topic(TAP_ROUTE, name))}
        self.sources = {uuid for uuid in peripherals if _watched(subs, tap_topic(TAP_PERIPHERAL, uuid))}

    def publish(self, kind: str, name: str, batch: DataBatch, payloads: list[bytes]) -> None:
        """What a route delivers (after its rules) or what a source sent; dropped by the bus for a slow watcher."""
        assert self.sock is not None
        message = Tap(kind=kind, name=name, source=batch.source, seq=batch.seq, payloads=payloads, ts=time.time())
        try:
            self.sock.send_multipart([tap_topic(kind, name), encode(message)], zmq.NOBLOCK)
            self.published += 1
        except zmq.Again:
            pass  # the watcher is slow: its lines are dropped, routing goes on

    def publish_trace(self, trace: list) -> None:
        """One sampled payload's stage times, to whoever watches Topic.TRACE (dropped when nobody does any more)."""
        if self.tracing and self.sock is not None:
            try:
                self.sock.send_multipart([Topic.TRACE.value, encode(Trace(actor=self.name, stages=trace))], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a full queue: a sample lost, never a payload


def _watched(subscriptions: set[bytes], topic: bytes) -> bool:
    return any(topic.startswith(sub) for sub in subscriptions)
