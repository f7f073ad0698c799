"""Following the state keeper's replicated state (the Clone pattern), written once for every actor.

A follower keeps a ``StateReplica`` current: updates come from the bus, a snapshot is asked for at start,
after a gap and when the keeper's heartbeat shows a new epoch or a later seq (a keeper restart or a lost
trailing update). ``FollowerCore`` makes every decision (when to ask, which reply counts, what is garbage)
without sockets or clocks, so it is tested alone. Two flavours wrap it:

- ``AsyncReplicaFollower`` (gateway, router, scanner): two supervised tasks, a bus reader and a syncer that
  sleeps until the replica falls out of step; no timer runs while the replica is in step.
- ``SyncReplicaFollower`` (UI, supervisor): ``poll()`` never blocks (the snapshot is asked on a DEALER and
  its reply taken whenever it arrives); ``sockets`` and ``due_in()`` let the caller's poller sleep until
  something arrives or a retry is due.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, Iterable, Optional

import zmq
import zmq.asyncio

from .bus import connect_subscriber, parse_event
from .errors import OrchestratorError
from .protocol import Message, Op, ProtocolError, Reply, Request, StateUpdate, Topic, decode_as, encode
from .replica import StateReplica
from .requests import AsyncRequestClient
from .security import secure_client
from .settings import REQUEST_TIMEOUT_S, Endpoints

log = logging.getLogger(__name__)

SNAPSHOT_RETRY_S = 1.0  # an unanswered snapshot request is asked again this long after it was sent
MAX_EVENTS_PER_POLL = 1000  # a burst of updates is taken over several polls, never starving the caller

# What a follower tells its actor: the tables changed (the update that did it, None for a snapshot).
ChangeHook = Callable[[Optional[StateUpdate]], Any]
# Every event read from the bus, after the replica took it (heartbeats, activity): the actor's own use of them.
EventHook = Callable[[Message], Any]


class FollowerCore:
    """The decisions of following, free of I/O: when to ask for a snapshot, which reply counts, what is garbage."""

    def __init__(self, replica: StateReplica | None = None, retry_s: float = SNAPSHOT_RETRY_S) -> None:
        self.replica = replica if replica is not None else StateReplica()
        self.retry_s = retry_s
        self.pending: str | None = None  # req_id of the snapshot asked for and not answered yet
        self.asked_at: float | None = None
        self.asks = 0
        self.snapshots = 0
        self.dropped = 0  # garbage from the bus or the keeper: counted, never raised
        self.complained = False  # one warning per keeper outage, not one per retry

    def take_frames(self, frames: list[bytes]) -> tuple[Message | None, bool]:
        """One bus event: (the message, or None for garbage; whether the tables changed)."""
        try:
            _, message = parse_event(frames)
        except ProtocolError:
            self.dropped += 1
            return None, False
        try:
            return message, self.replica.feed(message)
        except (TypeError, ValueError):  # an update whose value is not a table's: resync rather than trust it
            self.dropped += 1
            self.replica.lost_sync()
            return message, False

    def ask_in(self, now: float) -> float | None:
        """Seconds until a snapshot should be asked for (0: now); None while the replica is in step (no deadline)."""
        if not self.replica.needs_snapshot:
            return None
        if self.asked_at is None:
            return 0.0
        return max(0.0, self.asked_at + self.retry_s - now)  # paced from the last ask, answered or not

    def asking(self, now: float) -> str:
        """A snapshot request leaves now: its req_id (a reply to any earlier one no longer counts)."""
        self.pending = uuid.uuid4().hex
        self.asked_at = now
        self.asks += 1
        return self.pending

    def take_reply(self, body: bytes) -> bool:
        """A reply frame from the keeper: True when it was the awaited snapshot and loaded."""
        try:
            reply = decode_as(body, Reply)
        except ProtocolError:
            self.dropped += 1
            return False
        if reply.req_id != self.pending or self.pending is None:
            return False  # a late answer to a request asked again since: the newer one counts
        if not reply.ok:
            self.failed()
            return False
        return self.take_snapshot(reply.result)

    def take_snapshot(self, snapshot: Any) -> bool:
        """Load a snapshot; a malformed one is counted and asked for again. True when loaded."""
        self.pending = None
        if not is_snapshot(snapshot):
            self.dropped += 1
            return False
        try:
            self.replica.load_snapshot(snapshot)  # replays the updates held meanwhile
        except (TypeError, ValueError):  # one of them held a value no table takes: start over
            self.dropped += 1
            self.replica.lost_sync()
            return False
        self.snapshots += 1
        self.complained = False
        return True

    def failed(self) -> bool:
        """The request got no snapshot: asked again retry_s after it was sent. True: say so (once per outage)."""
        self.pending = None
        first, self.complained = not self.complained, True
        return first

    def stats(self) -> dict[str, Any]:
        """For heartbeats: how often the replica had to be resynced, whether it is usable, garbage dropped."""
        return {"resyncs": self.replica.resyncs, "ready": self.replica.ready, "bus_garbage": self.dropped}


def is_snapshot(snapshot: Any) -> bool:
    """Whether a reply's result has the keeper's snapshot shape (checked before anything is replaced)."""
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("epoch"), str):
        return False
    if not isinstance(snapshot.get("config"), dict):
        return False
    seq = snapshot.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return False
    return _records(snapshot.get("peripherals"), "uuid") and _records(snapshot.get("routes"), "name")


def _records(table: Any, key: str) -> bool:
    return isinstance(table, list) and all(isinstance(row, dict) and isinstance(row.get(key), str) for row in table)


async def _call(hook: Callable[..., Any] | None, *args: Any) -> None:
    """Run an actor's hook, awaiting it when it is a coroutine function's result."""
    if hook is None:
        return
    result = hook(*args)
    if inspect.isawaitable(result):
        await result


class AsyncReplicaFollower:
    """For asyncio actors: ``tasks()`` gives the reader and the syncer, to be started under ``Supervised``."""

    def __init__(self, sub: zmq.asyncio.Socket, client: AsyncRequestClient, name: str, *,
                 on_change: ChangeHook | None = None, on_event: EventHook | None = None,
                 replica: StateReplica | None = None) -> None:
        self.core = FollowerCore(replica)
        self.replica = self.core.replica
        self.sub = sub
        self.client = client
        self.name = name
        self.on_change = on_change
        self.on_event = on_event
        self.out_of_step = asyncio.Event()  # the syncer's only wake-up: set when the replica needs a snapshot
        self.first = asyncio.Event()  # set once the first snapshot is loaded and on_change has taken it

    @classmethod
    def connect(cls, actx: zmq.asyncio.Context, endpoints: Endpoints, topics: Iterable[Topic | bytes],
                client: AsyncRequestClient, name: str, **hooks: Any) -> "AsyncReplicaFollower":
        """Subscribe to topics (Topic.STATE brings the updates and the keeper's heartbeat) and follow."""
        return cls(connect_subscriber(actx, endpoints, (Topic.STATE, *topics)), client, name, **hooks)

    @property
    def dropped(self) -> int:
        return self.core.dropped

    def tasks(self) -> tuple[Awaitable[None], Awaitable[None]]:
        """The two forever-tasks: read the bus, keep the replica in step."""
        if self.replica.needs_snapshot:
            self.out_of_step.set()
        return self.read(), self.sync()

    async def read(self) -> None:
        """Feed every bus event to the replica; tell the actor about changes and events; wake the syncer on a gap."""
        while True:
            message, changed = self.core.take_frames(await self.sub.recv_multipart())
            if message is None:
                continue
            if changed:
                await _call(self.on_change, message if isinstance(message, StateUpdate) else None)
            if self.replica.needs_snapshot:
                self.out_of_step.set()
            await _call(self.on_event, message)

    async def sync(self) -> None:
        """Asleep until the replica is out of step; then ask for snapshots (the request retries) until one loads."""
        while True:
            await self.out_of_step.wait()
            self.out_of_step.clear()
            while (wait := self.core.ask_in(time.monotonic())) is not None:
                if wait > 0:
                    await asyncio.sleep(wait)  # a quick refusal: paced, never a busy loop
                await self._ask()

    async def _ask(self) -> None:
        self.core.asking(time.monotonic())
        try:
            snapshot = await self.client.request(Op.SNAPSHOT, timeout=REQUEST_TIMEOUT_S)
        except OrchestratorError as exc:
            if self.core.failed():
                log.warning("%s: no snapshot from the state keeper yet (%s); retrying", self.name, exc)
            return
        if not self.core.take_snapshot(snapshot):
            log.warning("%s: the state keeper sent an unusable snapshot; asking again", self.name)
            return
        await _call(self.on_change, None)
        if not self.first.is_set():
            self.first.set()
            log.info("%s has the state: %d peripherals, %d routes", self.name, len(self.replica.peripherals),
                     len(self.replica.routes))

    def close(self) -> None:
        self.sub.close(linger=0)


class SyncReplicaFollower:
    """For synchronous loops that must never block on the keeper: ``poll()`` takes what arrived and asks when due."""

    def __init__(self, context: zmq.Context, endpoints: Endpoints, topics: Iterable[Topic | bytes] = (), *,
                 on_event: Callable[[Message], bool] | None = None, may_retry: Callable[[], bool] | None = None,
                 retry_s: float = SNAPSHOT_RETRY_S, max_events: int = MAX_EVENTS_PER_POLL) -> None:
        self.core = FollowerCore(retry_s=retry_s)
        self.replica = self.core.replica
        self.on_event = on_event
        self.may_retry = may_retry  # None: always; else retried only while this says so (the UI: while the bus lives)
        self.max_events = max_events
        self.sub = connect_subscriber(context, endpoints, (Topic.STATE, *topics))
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        secure_client(self.dealer, endpoints.state_front, endpoints.keys_dir)
        self.dealer.connect(endpoints.state_front)

    @property
    def sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        """Register both with the caller's poller: events and the snapshot's reply wake it."""
        return self.sub, self.dealer

    @property
    def dropped(self) -> int:
        return self.core.dropped

    @property
    def snapshots(self) -> int:
        return self.core.snapshots

    def due_in(self) -> float | None:
        """Seconds until poll() has a retry to send; None when nothing is timed (in step, or retries held back)."""
        wait = self.core.ask_in(time.monotonic())
        if wait is None or (self.core.asks and self.may_retry is not None and not self.may_retry()):
            return None
        return wait

    def poll(self) -> bool:
        """Take what has arrived (events first, then a snapshot), ask when due; True when something changed
        (the tables, or an event on_event says changed)."""
        changed = self.drain_events()
        return self.maybe_snapshot() or changed

    def drain_events(self) -> bool:
        changed = False
        for _ in range(self.max_events):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            message, moved = self.core.take_frames(frames)
            if message is None:
                continue
            changed |= moved
            if self.on_event is not None:
                changed |= bool(self.on_event(message))
        return changed

    def maybe_snapshot(self) -> bool:
        """Take a snapshot that arrived; ask (without waiting) when one is due. True when one loaded."""
        loaded = self._take_replies()
        if self.due_in() == 0.0:
            self._ask()
        return loaded

    def _take_replies(self) -> bool:
        loaded = False
        while True:
            try:
                frames = self.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return loaded
            loaded |= self.core.take_reply(frames[-1])

    def _ask(self) -> None:
        req_id = self.core.asking(time.monotonic())
        try:
            self.dealer.send_multipart([b"", encode(Request(op=Op.SNAPSHOT.value, req_id=req_id))], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # no keeper connected yet: asked again after retry_s

    def close(self) -> None:
        self.sub.close(linger=0)
        self.dealer.close(linger=0)
