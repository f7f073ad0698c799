"""Event bus helpers: sockets to the broker, publishing, activity log lines, heartbeats."""
from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any, Iterable

import zmq

from .protocol import Activity, Heartbeat, Message, ProtocolError, Topic, decode, encode
from .security import secure_client
from .settings import (HEARTBEAT_EXPIRY_S, HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, IDLE_HEARTBEAT_INTERVAL_S,
                       STARTUP_BEAT_INTERVAL_S, STARTUP_BEATS, Endpoints)

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


def connect_subscriber(context: zmq.Context, endpoints: Endpoints, topics: Iterable[Topic | bytes]) -> zmq.Socket:
    """A SUB socket connected to the broker's XPUB side, filtered on topics."""
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, EVENT_HWM * 10)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.value if isinstance(topic, Topic) else topic)
    secure_client(sock, endpoints.events_out, endpoints.keys_dir)
    sock.connect(endpoints.events_out)
    return sock


def publish(sock: zmq.Socket, topic: Topic | bytes, message: Message) -> None:
    """Send one event without ever blocking the caller (a full queue drops, as PUB does)."""
    if sock.closed:
        return
    try:
        sock.send_multipart([topic.value if isinstance(topic, Topic) else topic, encode(message)], flags=zmq.NOBLOCK)
    except zmq.ZMQError:
        pass  # full queue (EAGAIN) or a socket closing at shutdown: events are best effort


def parse_event(frames: list[bytes]) -> tuple[bytes, Message]:
    """Split [topic, body] and decode the body; raise ProtocolError on anything else."""
    if len(frames) != 2:
        raise ProtocolError(f"event must have 2 frames, got {len(frames)}")
    return frames[0], decode(frames[1])


FILE_ONLY_FLAG = "file_only"
FILE_ONLY = {FILE_ONLY_FLAG: True}  # log(..., extra=FILE_ONLY): the log file only, not the activity feed


class ActivityHandler(logging.Handler):
    """Turns this actor's INFO-and-above log records into activity events on the bus."""

    def __init__(self, actor: str, sock: zmq.Socket) -> None:
        super().__init__(logging.INFO)
        self.actor = actor
        self.sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, FILE_ONLY_FLAG, False):
            return
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        activity = Activity(actor=self.actor, level=record.levelname, text=text, ts=record.created)
        publish(self.sock, Topic.ACTIVITY, activity)


LIVENESS_TOPICS = (Topic.HEARTBEAT, Topic.KEEPER_HEARTBEAT)  # every actor's heartbeat, the keeper's included


def heartbeat_topic(actor: str) -> bytes:
    """The topic an actor beats on: under Topic.HEARTBEAT (all beats), so one actor's (or a prefix's) beats can be
    subscribed alone."""
    return Topic.HEARTBEAT.value + b"\x00" + actor.encode()


def beat_expiry(beat: Heartbeat) -> float:
    """How long after this beat its sender counts as silent."""
    return beat.expiry_s if beat.expiry_s > 0 else HEARTBEAT_EXPIRY_S


def idle_beat_interval(endpoints: Endpoints) -> float:
    """Seconds between beats while nothing changes: long on one board, HEARTBEAT_INTERVAL_S where other boards watch
    (tcp bus)."""
    return IDLE_HEARTBEAT_INTERVAL_S if endpoints.events_in.startswith("ipc://") else HEARTBEAT_INTERVAL_S


def next_boundary(now: float, period: float) -> float:
    """The first multiple of period after now on the monotonic clock, which every process of a board shares: actors
    that beat on it wake the broker, the supervisor and the UI once per round, not once per actor."""
    return (math.floor(now / period) + 1) * period


class Heartbeater:
    """Publishes this actor's heartbeat from the actor's own loop: every HEARTBEAT_INTERVAL_S while its figures
    change (when beat_on_change), else on the next multiple of idle_interval_s (never further apart, and in step with
    the board's other actors); each beat says when to count the actor out."""

    def __init__(self, actor: str, sock: zmq.Socket, endpoints: Endpoints | None = None, topic: Topic = Topic.HEARTBEAT,
                 beat_on_change: bool = True) -> None:
        self.actor = actor
        self.sock = sock
        self.topic = topic
        self.idle_interval_s = HEARTBEAT_INTERVAL_S if endpoints is None else idle_beat_interval(endpoints)
        self.beat_on_change = beat_on_change
        self.started_at = time.time()
        self.host = socket.gethostname()
        self.next_beat = 0.0
        self.last_beat = -HEARTBEAT_INTERVAL_S
        self.last_stats: dict[str, Any] | None = None
        self.beats = 0

    def due_in(self) -> float:
        """Seconds until the next beat is due (0 when it is): how long the actor's loop may sleep."""
        return max(0.0, self.next_beat - time.monotonic())

    def maybe_beat(self, stats: dict[str, Any] | None = None) -> bool:
        """Beat if one is due (changed figures make it due HEARTBEAT_INTERVAL_S after the last beat); True when it
        did."""
        now = time.monotonic()
        stats = stats or {}
        if self.beat_on_change and stats != self.last_stats:
            self.next_beat = min(self.next_beat, self.last_beat + HEARTBEAT_INTERVAL_S)
        if now < self.next_beat:
            return False
        self.last_beat, self.last_stats = now, stats
        self.beats += 1
        starting = self.beats < STARTUP_BEATS and STARTUP_BEAT_INTERVAL_S < self.idle_interval_s
        self.next_beat = now + STARTUP_BEAT_INTERVAL_S if starting else next_boundary(now, self.idle_interval_s)
        topic = heartbeat_topic(self.actor) if self.topic is Topic.HEARTBEAT else self.topic
        beat = Heartbeat(actor=self.actor, pid=os.getpid(), host=self.host, started_at=self.started_at, stats=stats,
                         expiry_s=self.idle_interval_s * HEARTBEAT_LIVENESS)
        publish(self.sock, topic, beat)
        return True


class BusPresence:
    """An actor's presence on the bus: its publisher, its log lines as activity events, its heartbeat. ``close()``
    detaches the log handler before the publisher closes, so a line logged at shutdown never meets a dead socket."""

    def __init__(self, context: zmq.Context, endpoints: Endpoints, actor: str, *, beat_as: str | None = None,
                 topic: Topic = Topic.HEARTBEAT, beat_on_change: bool = True,
                 logger: logging.Logger | None = None) -> None:
        self.pub = connect_publisher(context, endpoints)
        self.activity = ActivityHandler(actor, self.pub)
        self.logger = logger if logger is not None else logging.getLogger()
        self.logger.addHandler(self.activity)
        self.heart = Heartbeater(beat_as or actor, self.pub, endpoints, topic, beat_on_change)

    def close(self, linger_ms: int | None = None) -> None:
        """Detach from logging, then close the publisher (lines sent leave within linger_ms, LINGER_MS by default)."""
        self.logger.removeHandler(self.activity)
        self.pub.close(linger=linger_ms)

    def __enter__(self) -> "BusPresence":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
