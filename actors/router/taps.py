"""Taps (introspection): publish a route's or a source's payloads only while someone subscribed to its tap topic.

A mixin of ``Router``: an XPUB connected to the bus (``Router.tap``) tells which topics are watched; Tap messages
are dropped when the bus is full, so a watcher never slows routing.
"""
from __future__ import annotations

import time

import zmq

from ..core.protocol import TAP_PERIPHERAL, TAP_ROUTE, DataBatch, Tap, Topic, encode, tap_topic


class Taps:
    """Which routes and sources are watched, and publishing what they carry."""

    def _read_tap_subscriptions(self) -> None:
        """XPUB tells us (un)subscriptions as [1|0]+topic; only tap topics count (a catch-all b"" does not)."""
        changed = False
        while True:
            try:
                frame = self.tap.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame and frame[1:] == Topic.TRACE.value:
                self.tracing = frame[0] == 1
                continue
            if not frame or not frame[1:].startswith(Topic.TAP.value):
                continue
            if frame[0] == 1:
                self.tap_subscriptions.add(frame[1:])
            else:
                self.tap_subscriptions.discard(frame[1:])
            changed = True
        if changed:
            self._update_taps()

    def _update_taps(self) -> None:
        """Which routes and sources are watched now (a subscription may be a prefix: all routes)."""
        subs = self.tap_subscriptions
        if not subs:
            self.tapped_routes, self.tapped_sources = set(), set()
            return
        self.tapped_routes = {name for name in self.replica.routes if _watched(subs, tap_topic(TAP_ROUTE, name))}
        self.tapped_sources = {uuid for uuid in self.replica.peripherals
                               if _watched(subs, tap_topic(TAP_PERIPHERAL, uuid))}

    def _publish_tap(self, kind: str, name: str, batch: DataBatch, payloads: list[bytes]) -> None:
        """What a route delivers (after its rules) or a source sent; dropped by the bus when the watcher is slow."""
        message = Tap(kind=kind, name=name, source=batch.source, seq=batch.seq, payloads=payloads, ts=time.time())
        try:
            self.tap.send_multipart([tap_topic(kind, name), encode(message)], zmq.NOBLOCK)
            self.counters.taps += 1
        except zmq.Again:
            pass  # the watcher is slow: its lines are dropped, routing goes on


def _watched(subscriptions: set[bytes], topic: bytes) -> bool:
    return any(topic.startswith(sub) for sub in subscriptions)
