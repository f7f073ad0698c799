"""A data router: takes DataBatches from the gateway, fans each payload out to every route of its source.

Data plane (docs/architecture.md §5): a DEALER with identity ``name`` connected to the gateway's ROUTER on
``endpoints.data``; heartbeats on it (each IDLE_HEARTBEAT_INTERVAL_S on one board, HEARTBEAT_INTERVAL_S across
boards) so the gateway counts us live; ``[encoded DataBatch]`` in, ``[encoded DataAck]`` out once every chunk of
the batch (and of every earlier batch of that source) is settled: delivered, dropped, or parked.

This class is the lifecycle and the wiring of its parts, each given what it uses:
``fanout`` (each batch to the queue of every route's sink), ``sinkset`` (the sinks, their trouble episodes and
parking: a sink that falls behind never holds back the others), ``sinks`` (a bounded queue and a worker thread
per sink), ``acks`` (coalesced acks), ``usage`` (per-route counters to the state keeper at most once per
USAGE_FLUSH_INTERVAL_S) and ``taps`` (payloads published only while someone watches).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
import time
from typing import Any

import zmq
import zmq.asyncio

from ..core.bus import BusPresence
from ..core.follower import AsyncReplicaFollower
from ..core.protocol import Heartbeat, Op, StateUpdate, encode
from ..core.replica import StateReplica
from ..core.tasks import Supervised
from ..core.runner import StopFlag, run_actor
from ..core.security import secure_client
from ..core.settings import (HEARTBEAT_LIVENESS, POLL_INTERVAL_MS, ROUTER_SWITCH_INTERVAL_S, USAGE_FLUSH_INTERVAL_S,
                             Runtime)
from .acks import Acks
from .fanout import Fanout
from .sinkset import Counters, SinkSet
from .taps import Taps
from .usage import Usage
from ..core.requests import AsyncRequestClient

log = logging.getLogger(__name__)

# While a sink has payloads queued or is in trouble: ages, stalls and parking are checked this often.
TICK_S = POLL_INTERVAL_MS / 1000 / 2
DATA_HWM = 10_000
SINK_JOIN_S = 1.0
# On a graceful stop: how long queued payloads may take to reach their sinks, and the final acks to leave.
SHUTDOWN_DRAIN_S = 1.0
SHUTDOWN_POLL_S = 0.01
FINAL_ACK_LINGER_MS = 500
TAP_HWM = 1_000


class Router:
    """One data router (router-1 .. router-N): lifecycle and wiring of its replica, data socket and parts."""

    def __init__(self, runtime: Runtime, context: zmq.Context, stop: StopFlag, name: str = "router") -> None:
        self.runtime = runtime
        self.context = context
        self.stop = stop
        self.name = name
        self.replica = StateReplica()
        self.counters = Counters()
        self.wake = asyncio.Event()  # the housekeeping loop sleeps on it until its next deadline
        self.acks = Acks()
        self.usage = Usage(self._request, self.wake.set, name)
        self.taps = Taps(name, lambda: (self.replica.routes, self.replica.peripherals))
        self.sinks = SinkSet(self.replica, self.counters, self.usage, self.acks.chunk_done, self.taps.publish_trace,
                             self.wake.set)
        self.fanout = Fanout(self.replica, self.counters, self.sinks, self.acks, self.usage, self.taps)
        self.dealer: zmq.asyncio.Socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()
        self.host = socket.gethostname()

    # ---- lifecycle -------------------------------------------------------------------
    def run(self) -> None:
        sys.setswitchinterval(ROUTER_SWITCH_INTERVAL_S)  # a sink thread's write waits for the loop this long at most
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sinks.loop = self.loop
        endpoints = self.runtime.endpoints
        self.actx = zmq.asyncio.Context.shadow(self.context.underlying)
        self.presence = BusPresence(self.context, endpoints, self.name)
        self.heart = self.presence.heart
        self.tap = self.taps.sock = self._connect_tap()
        self.stop.on_set(lambda: self.loop.call_soon_threadsafe(self.wake.set))
        # A tap opens at once, not at the next beat.
        self.loop.add_reader(self.tap.getsockopt(zmq.FD), self.taps.read_subscriptions)
        self.client = AsyncRequestClient(self.actx, endpoints.state_front, endpoints.keys_dir)
        self.follower = AsyncReplicaFollower.connect(self.actx, endpoints, (), self.client, self.name,
                                                     on_change=self._tables_changed, replica=self.replica)
        self.tasks = Supervised(self.wake)
        self.tasks.start(*self.follower.tasks())
        log.info("%s started (pid %d), data endpoint %s", self.name, os.getpid(), endpoints.data)
        try:
            await self._housekeeping()
        finally:
            await self._shutdown()

    async def _request(self, op: Op, **args: Any) -> Any:
        """Usage reports' way to the state keeper (the client is opened with the loop)."""
        return await self.client.request(op, **args)

    def _connect_tap(self) -> zmq.Socket:
        """An XPUB on the bus: subscriptions to tap topics arrive here, so we publish only what is watched."""
        sock = self.context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, TAP_HWM)
        secure_client(sock, self.runtime.endpoints.events_in, self.runtime.endpoints.keys_dir)
        sock.connect(self.runtime.endpoints.events_in)
        return sock

    def _connect_data(self) -> zmq.asyncio.Socket:
        sock = self.actx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.name.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, DATA_HWM)
        sock.setsockopt(zmq.SNDHWM, DATA_HWM)
        secure_client(sock, self.runtime.endpoints.data, self.runtime.endpoints.keys_dir)
        sock.connect(self.runtime.endpoints.data)
        log.info("%s connected to the gateway's data endpoint %s", self.name, self.runtime.endpoints.data)
        return sock

    async def _housekeeping(self) -> None:
        """The timed work: stop flag, data socket start, heartbeats, usage flush, taps."""
        next_data_beat = 0.0
        next_usage = time.monotonic() + USAGE_FLUSH_INTERVAL_S
        while not self.stop.should_stop():
            self.tasks.check()  # a reader died: let the supervisor restart us
            if self.dealer is None and self.replica.ready:
                self.dealer = self._connect_data()
                self.tasks.start(self.fanout.read(self.dealer), self.acks.run(self.dealer.send))
            now = time.monotonic()
            if self.usage.routes and now - next_usage > USAGE_FLUSH_INTERVAL_S:
                # Traffic after a quiet spell: its first report covers one whole interval.
                next_usage = now + USAGE_FLUSH_INTERVAL_S
            elif now >= next_usage or (self.usage.routes and self.heart.due_in() == 0):
                # Due, or a beat with our counters is about to leave: routes.cf and /status move together.
                self.usage.flush(USAGE_FLUSH_INTERVAL_S - (next_usage - now))
                next_usage = now + USAGE_FLUSH_INTERVAL_S
            self.sinks.reap_idle()
            self.sinks.watch(now)
            self.taps.read_subscriptions()
            beat = self.heart.maybe_beat(self.stats())
            if self.dealer is not None and (beat or now >= next_data_beat):
                # With the bus beat, so both cost one wake-up; acks prove us alive too while data flows.
                next_data_beat = now + self.heart.idle_interval_s
                await self.dealer.send(encode(self._heartbeat()))
            # No data socket yet: nothing timed for it, the first snapshot wakes us.
            data_beat = next_data_beat if self.dealer is not None else math.inf
            next_due = min(data_beat, next_usage) if self.usage.routes else data_beat
            await self._sleep(next_due - time.monotonic())

    async def _sleep(self, until_beat_s: float) -> None:
        """Until the next beat (usage flush and idle-sink reaping ride on it), or TICK_S while a sink needs watching;
        woken at once by a stop, a reader's death or the first snapshot (the data socket opens)."""
        short = self.sinks.watching()
        timeout = max(0.0, min(until_beat_s, self.heart.due_in(), TICK_S if short else until_beat_s))
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.wake.clear()

    async def _shutdown(self) -> None:
        await self.tasks.cancel()
        await self._drain_and_ack()
        self.sinks.stop(SINK_JOIN_S)
        await self.usage.final_flush()
        self.client.close()
        if self.dealer is not None:
            self.dealer.close()  # with the linger set above: the final acks leave first
        if self.tap is not None:
            self.loop.remove_reader(self.tap.getsockopt(zmq.FD))
        self.follower.close()
        if self.tap is not None:
            self.tap.close(linger=0)
        log.info("%s stopped: %d delivered, %d dropped", self.name, self.counters.delivered, self.counters.dropped)
        self.presence.close()

    async def _drain_and_ack(self) -> None:
        """Graceful stop (scale down): deliver what is queued (bounded), then ack it (no resend twice)."""
        deadline = time.monotonic() + SHUTDOWN_DRAIN_S
        while self.sinks.draining() and time.monotonic() < deadline:
            await asyncio.sleep(SHUTDOWN_POLL_S)
        await asyncio.sleep(0)  # the last delivery reports
        if self.dealer is None or not self.acks.due:
            return
        self.dealer.setsockopt(zmq.LINGER, FINAL_ACK_LINGER_MS)
        try:
            await self.acks.send_final(self.dealer.send, FINAL_ACK_LINGER_MS / 1000)
        except (asyncio.TimeoutError, zmq.ZMQError) as exc:
            log.warning("%s: final acks not sent (%s); the gateway will resend those payloads", self.name, exc)

    def stats(self) -> dict[str, Any]:
        """What /status and the UI show for this router."""
        c = self.counters
        return {"delivered": c.delivered, "dropped": c.dropped, "expired": c.expired, "direct": c.direct,
                "filtered": c.filtered, **self.sinks.figures(), "batches": c.batches,
                "unacked": self.acks.outstanding(), "acks": self.acks.sent, "malformed": c.malformed,
                "routes": len(self.replica.routes), "taps": len(self.taps.subscriptions),
                **self.follower.core.stats()}

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(actor=self.name, pid=os.getpid(), host=self.host, started_at=self.started_at,
                         stats=self.stats(), expiry_s=self.heart.idle_interval_s * HEARTBEAT_LIVENESS)

    # ---- state replica ---------------------------------------------------------------
    def _tables_changed(self, update: StateUpdate | None = None) -> None:
        """The follower's hook: rebuild the fan-out index lazily, refresh sink addresses and bounds now; a snapshot
        wakes the housekeeping (the data socket opens with the first one)."""
        if update is None:
            self.wake.set()
        self.fanout.tables_changed()
        self.sinks.tables_changed()
        self.taps.update()


def main(argv: list[str] | None = None) -> int:
    return run_actor("router", Router, argv)
