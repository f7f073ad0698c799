"""A replica of the state keeper's tables for a synchronous loop (the supervisor) that must never block on the keeper.

Updates come from the bus; a snapshot is asked for on a DEALER socket and its reply taken whenever
it arrives, asked again every SNAPSHOT_RETRY_S while none does (a restarting keeper costs a delay).
"""
from __future__ import annotations

import logging
import time
import uuid

import zmq

from .bus import connect_subscriber, parse_event
from .protocol import Op, ProtocolError, Reply, Request, Topic, decode_as, encode
from .replica import StateReplica
from .security import secure_client
from .settings import Endpoints

log = logging.getLogger(__name__)

SNAPSHOT_RETRY_S = 1.0
MAX_EVENTS_PER_POLL = 1000  # a burst of updates is taken over several polls, never starving the caller


class StateFollower:
    """Owns a SUB and a DEALER socket; ``poll()`` (non-blocking) keeps ``replica`` current."""

    def __init__(self, context: zmq.Context, endpoints: Endpoints) -> None:
        self.replica = StateReplica()
        self.sub = connect_subscriber(context, endpoints, (Topic.STATE, Topic.HEARTBEAT))
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        secure_client(self.dealer, endpoints.state_front, endpoints.keys_dir)
        self.dealer.connect(endpoints.state_front)
        self.pending: str | None = None
        self.asked_at = 0.0
        self.dropped = 0

    def poll(self) -> bool:
        """Take what has arrived; True when the tables changed."""
        changed = self._drain_events()
        changed = self._take_snapshot() or changed
        if self.replica.needs_snapshot and time.monotonic() - self.asked_at >= SNAPSHOT_RETRY_S:
            self._ask_snapshot()
        return changed

    def _drain_events(self) -> bool:
        changed = False
        for _ in range(MAX_EVENTS_PER_POLL):
            if not self.sub.poll(0):
                break
            try:
                _, message = parse_event(self.sub.recv_multipart())
            except ProtocolError:
                self.dropped += 1
                continue
            changed = self.replica.feed(message) or changed
        return changed

    def _ask_snapshot(self) -> None:
        self.pending = uuid.uuid4().hex
        self.asked_at = time.monotonic()
        try:
            self.dealer.send_multipart([b"", encode(Request(op=Op.SNAPSHOT.value, req_id=self.pending))], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # no keeper connected yet: asked again after SNAPSHOT_RETRY_S

    def _take_snapshot(self) -> bool:
        changed = False
        while self.dealer.poll(0):
            try:
                reply = decode_as(self.dealer.recv_multipart()[-1], Reply)
            except ProtocolError:
                self.dropped += 1
                continue
            if reply.ok and reply.req_id == self.pending and isinstance(reply.result, dict):
                self.replica.load_snapshot(reply.result)
                self.pending = None
                changed = True
        return changed

    def close(self) -> None:
        self.sub.close(linger=0)
        self.dealer.close(linger=0)
