"""/tap: stream a route's or a source's live payloads to one text client, from the routers' tap topics on the bus.

``Taps`` is given a way to open a bus subscriber and the stop flag; the gateway hands its ``tap`` to connections.
"""
from __future__ import annotations

import logging
from typing import Callable

import zmq
import zmq.asyncio

from ..core.bus import parse_event
from ..core.protocol import ProtocolError, Tap, tap_topic
from ..core.runner import StopFlag
from .connection import Connection

log = logging.getLogger(__name__)

TAP_HWM = 1000
TAP_POLL_MS = 200
TAP_MAX_BUFFERED_BYTES = 1 << 20


class Taps:
    """A slow tap client loses lines; it never slows routing."""

    def __init__(self, subscriber: Callable[[], zmq.asyncio.Socket], stop: StopFlag) -> None:
        self.subscriber = subscriber  # a new bus subscriber, subscribed to nothing yet
        self.stop = stop

    async def tap(self, connection: Connection, kind: str, key: str) -> None:
        """Host: stream live payloads of a route or source to one client until it goes (a slow one loses lines)."""
        sock = self.subscriber()
        sock.setsockopt(zmq.RCVHWM, TAP_HWM)
        sock.setsockopt(zmq.SUBSCRIBE, tap_topic(kind, key))
        shown = skipped = 0
        log.info("tap on %s %s opened by %s", kind, key, connection.peer.host)
        try:
            while connection.open and not self.stop.should_stop():
                if not await sock.poll(TAP_POLL_MS):
                    continue
                try:
                    _, message = parse_event(await sock.recv_multipart())
                except ProtocolError:
                    continue
                if not isinstance(message, Tap):
                    continue
                if connection.write_buffered() > TAP_MAX_BUFFERED_BYTES:
                    skipped += len(message.payloads)
                    continue
                connection.write(b"".join(payload + b"\n" for payload in message.payloads))
                shown += len(message.payloads)
        finally:
            sock.close(linger=0)
            log.info("tap on %s %s closed: %d payloads shown, %d skipped for a slow reader", kind, key, shown, skipped)
