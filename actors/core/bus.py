"""Event bus helpers: sockets to the broker, publishing, activity log lines, heartbeats."""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Iterable

import zmq

from .protocol import Activity, Heartbeat, Message, ProtocolError, Topic, decode, encode
from .security import secure_client
from .settings import HEARTBEAT_INTERVAL_S, Endpoints

# Events are small and rare; a high-water mark protects memory if the broker stalls.
EVENT_HWM = 10_000
LINGER_MS = 200


def connect_publisher(context: zmq.Context, endpoints: Endpoints) -> zmq.Socket:
    """A PUB socket connected to the broker's XSUB side."""
    sock = context.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, EVENT_HWM)
    secure_client(sock, endpoints.events_in, endpoints.keys_dir)
    sock.connect(endpoints.events_in)
    return sock


def connect_subscriber(context: zmq.Context, endpoints: Endpoints, topics: Iterable[Topic]) -> zmq.Socket:
    """A SUB socket connected to the broker's XPUB side, filtered on topics."""
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, EVENT_HWM * 10)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.value)
    secure_client(sock, endpoints.events_out, endpoints.keys_dir)
    sock.connect(endpoints.events_out)
    return sock


def publish(sock: zmq.Socket, topic: Topic, message: Message) -> None:
    """Send one event without ever blocking the caller (a full queue drops, as PUB does)."""
    if sock.closed:
        return
    try:
        sock.send_multipart([topic.value, encode(message)], flags=zmq.NOBLOCK)
    except zmq.ZMQError:
        pass  # full queue (EAGAIN) or a socket closing at shutdown: events are best effort


def parse_event(frames: list[bytes]) -> tuple[bytes, Message]:
    """Split [topic, body] and decode the body; raise ProtocolError on anything else."""
    if len(frames) != 2:
        raise ProtocolError(f"event must have 2 frames, got {len(frames)}")
    return frames[0], decode(frames[1])


class ActivityHandler(logging.Handler):
    """Turns this actor's INFO-and-above log records into activity events on the bus."""

    def __init__(self, actor: str, sock: zmq.Socket) -> None:
        super().__init__(logging.INFO)
        self.actor = actor
        self.sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        publish(self.sock, Topic.ACTIVITY, Activity(actor=self.actor, level=record.levelname, text=text, ts=record.created))


class Heartbeater:
    """Publishes this actor's heartbeat every HEARTBEAT_INTERVAL_S, from the actor's own loop."""

    def __init__(self, actor: str, sock: zmq.Socket) -> None:
        self.actor = actor
        self.sock = sock
        self.started_at = time.time()
        self.host = socket.gethostname()
        self.next_beat = 0.0

    def maybe_beat(self, stats: dict[str, Any] | None = None) -> bool:
        """Beat if one is due; returns True when it did."""
        now = time.monotonic()
        if now < self.next_beat:
            return False
        self.next_beat = now + HEARTBEAT_INTERVAL_S
        publish(self.sock, Topic.HEARTBEAT, Heartbeat(actor=self.actor, pid=os.getpid(), host=self.host, started_at=self.started_at, stats=stats or {}))
        return True
