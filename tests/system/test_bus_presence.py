"""One way onto the bus for every process: publisher, activity lines, heartbeat, and a clean detach."""
from __future__ import annotations

import logging
import time

import zmq

from actors.core.bus import BusPresence, connect_subscriber, parse_event
from actors.core.protocol import Activity, Heartbeat, Topic
from tests.support.instances import Instance

RECEIVE_TIMEOUT_S = 5.0
RETRY_BEAT_S = 0.3
SETTLE_TIMEOUT_S = 5.0


def receive(sub: zmq.Socket, kind: type, actor: str, timeout_s: float = RECEIVE_TIMEOUT_S) -> object | None:
    """The first event of kind from actor within timeout_s, or None."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not sub.poll(int(left * 1000) + 1):
            return None
        _, message = parse_event(sub.recv_multipart())
        if isinstance(message, kind) and getattr(message, "actor") == actor:
            return message
    return None


def test_presence_publishes_activity_and_beats_then_detaches(core: Instance) -> None:
    sub = connect_subscriber(core.context, core.runtime.endpoints, (Topic.ACTIVITY, Topic.HEARTBEAT))
    logger = logging.getLogger("presence-test")
    logger.setLevel(logging.INFO)
    presence = BusPresence(core.context, core.runtime.endpoints, "probe", beat_as="probe-beats", logger=logger)
    try:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        beat = None
        while beat is None and time.monotonic() < deadline:  # the SUB joins the broker a moment after it connects
            presence.heart.next_beat = 0.0
            presence.heart.maybe_beat({"n": 1})
            beat = receive(sub, Heartbeat, "probe-beats", RETRY_BEAT_S)
        assert isinstance(beat, Heartbeat) and beat.stats == {"n": 1}
        logger.warning("hello %s", "bus")
        line = receive(sub, Activity, "probe")
        assert isinstance(line, Activity) and line.text == "hello bus" and line.level == "WARNING"
    finally:
        presence.close(linger_ms=0)
        sub.close(linger=0)
    assert presence.activity not in logger.handlers and presence.pub.closed
    logger.warning("after close: no handler left to send on a closed socket")
