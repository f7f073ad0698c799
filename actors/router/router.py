"""A data router: takes DataBatches from the gateway, fans each payload out to every route of its source.

Data plane (docs/architecture.md §5): a DEALER with identity ``name`` connected
to the gateway's ROUTER on ``endpoints.data``; heartbeats on it (each IDLE_HEARTBEAT_INTERVAL_S on one board, HEARTBEAT_INTERVAL_S across boards) so
the gateway counts us live; ``[encoded DataBatch]`` in, ``[encoded DataAck]`` out once every
chunk of the batch (and of every earlier batch of that source) is settled: delivered, dropped,
or parked. Delivery itself is in ``sinks.py``: a bounded queue and a worker thread per sink.

Isolation: a sink that is down, or whose oldest payload waited longer than ``router_stall_s``, is
*parked*: its queued chunks, and every chunk queued for it until it caught up, are settled at
once, so the gateway's per-source window never waits for it and every other route of the
same sources keeps its pace. Only a parked sink's payloads lose the resend-after-router-crash
guarantee; its queue stays bounded by count, bytes and age, and what it loses is counted per
route (usage ``dropped``) with one activity line when the episode starts and one when it ends.

Bookkeeping stays off the payload path: usage counters go to the state keeper at most once per
USAGE_FLUSH_INTERVAL_S; no file, log line or round trip per payload.

Taps (introspection): an XPUB connected to the bus learns which ``tap_topic(...)`` someone
subscribed to; only those routes/sources are published, as ``Tap`` messages, dropped when
the bus is full, so a watcher never slows routing.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from ..core.bus import BusPresence
from ..core.follower import AsyncReplicaFollower
from ..core.protocol import (TAP_PERIPHERAL, TAP_ROUTE, DataAck, DataBatch, Heartbeat, ProtocolError, StateUpdate, Topic,
                             Trace, decode_as, encode)
from ..core.replica import StateReplica
from ..core.rules import RouteRules, RuleError
from ..core.tasks import Supervised
from ..core.runner import StopFlag, run_actor
from ..core.security import secure_client
from ..core.settings import HEARTBEAT_LIVENESS, MAX_PORT, MIN_PORT, POLL_INTERVAL_MS, ROUTER_SWITCH_INTERVAL_S, USAGE_FLUSH_INTERVAL_S, Runtime, sink_max_age, tunable
from .acks import Acks, AckBook, BatchTracker
from .sinkset import Sink, SinkSet
from .taps import Taps
from .usage import RouteUsage, UsageReports
from .sinks import MODE_MESSAGE, MODE_STREAM, Chunk, SinkAddress, framed_size
from ..core.requests import AsyncRequestClient
from ..core.net import LOCAL_HOST, is_own_listener

log = logging.getLogger(__name__)

TICK_S = POLL_INTERVAL_MS / 1000 / 2  # while a sink has payloads queued or is in trouble: ages, stalls and parking are checked this often
DATA_HWM = 10_000
# Batches handled before the data reader lets the rest of the loop run.
READER_YIELD_EVERY = 64
SINK_JOIN_S = 1.0
TRACE_INTERVAL_S = 0.002  # while a latency trace is watched: at most one sampled batch this often
TRACE_HEAD_BYTES = 48  # of the batch's first payload, so the watcher can tell which payload a trace follows
# On a graceful stop: how long queued payloads may take to reach their sinks, and the final acks to leave.
SHUTDOWN_DRAIN_S = 1.0
SHUTDOWN_POLL_S = 0.01
FINAL_ACK_LINGER_MS = 500
TAP_HWM = 1_000
# Joins a route target's uuid and port in the sink key of a target no peripheral has (a uuid has no "@").
BY_PORT_SEPARATOR = "@"


@dataclass
class Counters:
    delivered: int = 0
    dropped: int = 0
    expired: int = 0
    direct: int = 0
    batches: int = 0
    malformed: int = 0
    filtered: int = 0
    acks: int = 0
    taps: int = 0
    usage_sent: int = 0


class Router(SinkSet, Acks, UsageReports, Taps):
    """One data router (router-1 .. router-N): replica, data DEALER, sinks, usage, taps."""

    def __init__(self, runtime: Runtime, context: zmq.Context, stop: StopFlag, name: str = "router") -> None:
        self.runtime = runtime
        self.context = context
        self.stop = stop
        self.name = name
        self.replica = StateReplica()
        self.counters = Counters()
        self.acks = AckBook()
        self.sinks: dict[str, Sink] = {}
        self.fanout: dict[str, list[tuple[str, str, RouteRules | None]]] = {}
        self.compiled_rules: dict[tuple[str, str], RouteRules | None] = {}
        self.own_listener_sinks: set[str] = set()  # sinks recorded on our own command or data ports (reported once)
        self.fanout_dirty = True
        self.stall_s = float(tunable({}, "router_stall_s"))
        self.usage: dict[str, RouteUsage] = {}
        self.ack_due: dict[tuple[str, str], int] = {}
        self.ack_ready = asyncio.Event()
        self.wake = asyncio.Event()  # the housekeeping loop sleeps on it until its next deadline
        self.tap_subscriptions: set[bytes] = set()
        self.tracing = False  # someone subscribes to Topic.TRACE: sample batches for the latency breakdown
        self.trace_recv = 0.0
        self.next_trace = 0.0
        self.tapped_routes: set[str] = set()
        self.tapped_sources: set[str] = set()
        self.usage_task: asyncio.Task | None = None
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
        self.ack_ready = asyncio.Event()
        endpoints = self.runtime.endpoints
        self.actx = zmq.asyncio.Context.shadow(self.context.underlying)
        self.presence = BusPresence(self.context, endpoints, self.name)
        self.heart = self.presence.heart
        self.tap = self._connect_tap()
        self.stop.on_set(lambda: self.loop.call_soon_threadsafe(self.wake.set))
        self.loop.add_reader(self.tap.getsockopt(zmq.FD), self._read_tap_subscriptions)  # a tap opens at once, not at the next beat
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
                self.tasks.start(self._read_data(), self._send_acks())
            now = time.monotonic()
            if self.dealer is not None and now >= next_data_beat:
                next_data_beat = now + self.heart.idle_interval_s  # acks prove us alive too while data flows
                await self.dealer.send(encode(self._heartbeat()))
            if self.usage and now - next_usage > USAGE_FLUSH_INTERVAL_S:
                next_usage = now + USAGE_FLUSH_INTERVAL_S  # traffic after a quiet spell: its first report covers one whole interval
            elif now >= next_usage or (self.usage and self.heart.due_in() == 0):
                # Due, or a beat with our counters is about to leave: routes.cf and /status move together.
                self._flush_usage(USAGE_FLUSH_INTERVAL_S - (next_usage - now))
                next_usage = now + USAGE_FLUSH_INTERVAL_S
            self._reap_idle_sinks()
            self._watch_sinks(now)
            self._read_tap_subscriptions()
            self.heart.maybe_beat(self.stats())
            # No data socket yet: nothing timed for it, the first snapshot wakes us.
            data_beat = next_data_beat if self.dealer is not None else math.inf
            await self._sleep((min(data_beat, next_usage) if self.usage else data_beat) - time.monotonic())

    async def _sleep(self, until_beat_s: float) -> None:
        """Until the next beat (usage flush and idle-sink reaping ride on it), or TICK_S while a sink needs watching;
        woken at once by a stop, a reader's death or the first snapshot (the data socket opens)."""
        watching = any(s.queue.messages or s.parked or s.episode is not None or s.worker.down_reason is not None
                       for s in self.sinks.values())
        timeout = max(0.0, min(until_beat_s, self.heart.due_in(), TICK_S if watching else until_beat_s))
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.wake.clear()

    async def _shutdown(self) -> None:
        await self.tasks.cancel()
        await self._drain_and_ack()
        for sink in self.sinks.values():
            sink.worker.stop()
        for sink in self.sinks.values():
            sink.worker.stop(SINK_JOIN_S)
        await self._final_usage_flush()
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
        """Graceful stop (scale down): deliver what is queued (bounded), then ack it, so the gateway resends nothing twice."""
        deadline = time.monotonic() + SHUTDOWN_DRAIN_S
        while any(s.queue.messages and not s.parked and s.worker.down_reason is None for s in self.sinks.values()) and time.monotonic() < deadline:
            await asyncio.sleep(SHUTDOWN_POLL_S)
        await asyncio.sleep(0)  # the last delivery reports
        if self.dealer is None or not self.ack_due:
            return
        due, self.ack_due = self.ack_due, {}
        self.dealer.setsockopt(zmq.LINGER, FINAL_ACK_LINGER_MS)
        try:
            for (source, epoch), seq in due.items():
                await asyncio.wait_for(self.dealer.send(encode(DataAck(source=source, seq=seq, epoch=epoch))), FINAL_ACK_LINGER_MS / 1000)
                self.counters.acks += 1
        except (asyncio.TimeoutError, zmq.ZMQError) as exc:
            log.warning("%s: final acks not sent (%s); the gateway will resend those payloads", self.name, exc)

    def stats(self) -> dict[str, Any]:
        """What /status and the UI show for this router."""
        c = self.counters
        return {"delivered": c.delivered, "dropped": c.dropped, "expired": c.expired, "direct": c.direct, "filtered": c.filtered, "queued": sum(s.queue.messages for s in self.sinks.values()),
                "sinks": len(self.sinks), "parked": sum(1 for s in self.sinks.values() if s.parked), "batches": c.batches, "unacked": self.acks.outstanding(), "acks": c.acks,
                "malformed": c.malformed, "routes": len(self.replica.routes), "taps": len(self.tap_subscriptions),
                **self.follower.core.stats()}

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(actor=self.name, pid=os.getpid(), host=self.host, started_at=self.started_at, stats=self.stats(),
                         expiry_s=self.heart.idle_interval_s * HEARTBEAT_LIVENESS)

    # ---- state replica ---------------------------------------------------------------
    def _tables_changed(self, update: StateUpdate | None = None) -> None:
        """The follower's hook: rebuild the fan-out index lazily, refresh sink addresses and bounds now; a snapshot
        wakes the housekeeping (the data socket opens with the first one)."""
        if update is None:
            self.wake.set()
        self.fanout_dirty = True
        self.stall_s = float(tunable(self.replica.config, "router_stall_s"))
        for sink in self.sinks.values():
            sink.worker.address = self._address_of(sink.uuid)
            sink.worker.max_age_s = self._max_age_of(sink.uuid)
            sink.queue.max_messages, sink.queue.max_bytes = self._queue_bounds()
        self._update_taps()

    def _routes_for(self, source: str) -> list[tuple[str, str, RouteRules | None]]:
        """(route, sink uuid, rules or None) for every route leaving source; rebuilt after a table change."""
        if self.fanout_dirty:
            fanout: dict[str, list[tuple[str, str, RouteRules | None]]] = {}
            for route in self.replica.routes.values():
                fanout.setdefault(route["incoming"], []).append((route["name"], self._sink_key(route), self._rules_of(route)))
            self.fanout = fanout
            self.fanout_dirty = False
        return self.fanout.get(source, [])

    def _rules_of(self, route: dict[str, Any]) -> RouteRules | None:
        """Compiled once per rule text; a rule that does not compile (hand-edited file) delivers nothing, logged once."""
        key = (route.get("filter") or "", route.get("transform") or "")
        if key not in self.compiled_rules:
            try:
                rules = RouteRules.of(route)
                self.compiled_rules[key] = None if rules.plain else rules
            except RuleError as exc:
                log.error("route %s has a rule that does not compile (%s): it delivers nothing until fixed", route["name"], exc)
                self.compiled_rules[key] = RouteRules(keep=lambda _payload: False)
        return self.compiled_rules[key]

    def _sink_key(self, route: dict[str, Any]) -> str:
        """The sink a route delivers to: its outgoing peripheral, or, for a uuid no peripheral has, the route's outgoing_port."""
        outgoing = route["outgoing"]
        if outgoing in self.replica.peripherals:
            return outgoing
        return by_port_key(outgoing, route.get("outgoing_port"))

    def _address_of(self, key: str) -> SinkAddress | None:
        peripheral = self.replica.peripherals.get(key)
        if peripheral is None:
            return self._address_by_port(key)
        if not isinstance(peripheral.get("port"), int):
            return None
        mode = MODE_STREAM if peripheral.get("delivery") == MODE_STREAM else MODE_MESSAGE
        host = peripheral.get("host") or "localhost"
        if self._is_own_listener(key, peripheral.get("name"), host, peripheral["port"]):
            return None
        return SinkAddress(host=host, port=peripheral["port"], mode=mode)

    def _address_by_port(self, key: str) -> SinkAddress | None:
        """As the original: a route's outgoing_port on this machine, in message mode (nothing says otherwise)."""
        uuid, _, port_text = key.partition(BY_PORT_SEPARATOR)
        if not (port_text.isascii() and port_text.isdigit()) or not MIN_PORT <= int(port_text) <= MAX_PORT:
            return None  # the route has no usable outgoing_port: nothing to deliver to
        port = int(port_text)
        if self._is_own_listener(key, f"route target {uuid[:8]} (by port)", LOCAL_HOST, port):
            return None
        return SinkAddress(host=LOCAL_HOST, port=port, mode=MODE_MESSAGE)

    def _is_own_listener(self, key: str, label: Any, host: str, port: int) -> bool:
        """Never deliver to ourselves: it would run as commands (logged once per sink)."""
        if not is_own_listener(host, port, self.replica.config):
            return False
        if key not in self.own_listener_sinks:
            self.own_listener_sinks.add(key)
            log.error("%s is recorded on our own port %s:%s; nothing is delivered to it", label, host, port)
        return True

    def _max_age_of(self, key: str) -> float:
        """The sink's own max_age (seconds) when it set one, else router_queue_age_s."""
        return sink_max_age(self.replica.peripherals.get(key, {}), self.replica.config)

    def _queue_bounds(self) -> tuple[int, int]:
        config = self.replica.config
        return int(tunable(config, "router_queue_messages")), int(tunable(config, "router_queue_bytes"))

    # ---- data path -------------------------------------------------------------------
    async def _read_data(self) -> None:
        assert self.dealer is not None
        handled = 0
        while True:
            frames = await self.dealer.recv_multipart()
            if self.tracing:
                self.trace_recv = time.time()
            try:
                batch = decode_as(frames[-1], DataBatch)
            except ProtocolError:
                self.counters.malformed += 1
                continue
            self.handle_batch(batch)
            handled += 1
            if handled % READER_YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def handle_batch(self, batch: DataBatch) -> None:
        """Fan one batch out to the queue of every route's sink; ack at once when it has no route."""
        self.counters.batches += 1
        payloads = batch.payloads
        routes = self._routes_for(batch.source)
        taps = bool(self.tapped_routes or self.tapped_sources)
        if taps and batch.source in self.tapped_sources:
            self._publish_tap(TAP_PERIPHERAL, batch.source, batch, payloads)
        tracker = BatchTracker(batch.source, batch.seq + len(payloads) - 1, pending=len(routes) if payloads else 0, epoch=batch.epoch)
        ack = self.acks.add(tracker)
        if ack is not None:
            self._ack(tracker.stream, ack)
            return
        nbytes = framed_size(payloads)
        trace = self._sample(batch) if self.tracing else None
        for route, sink_uuid, rules in routes:
            chunk = Chunk(route, payloads, nbytes, tracker) if rules is None else self._ruled_chunk(route, rules, batch, tracker)
            if trace is not None and chunk.payloads:
                chunk.trace = [*trace, time.time()]  # handed to the sink (a direct write, or its worker's queue)
            if taps and route in self.tapped_routes:
                self._publish_tap(TAP_ROUTE, route, batch, chunk.payloads)
            if not chunk.payloads:
                self._chunk_done(chunk)
                continue
            sink = self.sinks.get(sink_uuid) or self._new_sink(sink_uuid)
            if sink.queue.offer(chunk, sink.worker.try_direct):
                self._dropped_at_enqueue(sink, chunk)
            elif not chunk.queued_at:  # written directly, nothing queued
                self.counters.direct += 1
                self._account(sink, [chunk], time.time())
                continue
            if sink.parked:
                self._chunk_done(chunk)  # parked: the other routes of this batch need not wait for it

    def _sample(self, batch: DataBatch) -> list | None:
        """[first payload's head, sent by the gateway, received here] for one batch per TRACE_INTERVAL_S, else None."""
        if self.trace_recv < self.next_trace or not batch.payloads:
            return None
        self.next_trace = self.trace_recv + TRACE_INTERVAL_S
        return [batch.payloads[0][:TRACE_HEAD_BYTES], batch.received_at, self.trace_recv]

    def _publish_trace(self, trace: list) -> None:
        """One sampled payload's stage times, to whoever watches Topic.TRACE (dropped when nobody does any more)."""
        if self.tracing:
            try:
                self.tap.send_multipart([Topic.TRACE.value, encode(Trace(actor=self.name, stages=trace))], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a full queue: a sample lost, never a payload

    def _ruled_chunk(self, route: str, rules: RouteRules, batch: DataBatch, tracker: BatchTracker) -> Chunk:
        """Apply a route's filter/transform; what a filter holds back is counted, not delivered."""
        kept = []
        source = self.replica.peripherals.get(batch.source, {}).get("name", batch.source)  # templates show the name
        for payload in batch.payloads:
            result, _why = rules.apply(payload, source)
            if result is not None:
                kept.append(result)
        filtered = len(batch.payloads) - len(kept)
        if filtered:
            self._usage(route).filtered += filtered
            self.counters.filtered += filtered
        return Chunk(route, kept, framed_size(kept), tracker)

    def _dropped_at_enqueue(self, sink: Sink, chunk: Chunk) -> None:
        """Count a tail drop in the sink's episode; finish the chunk if nothing of it was queued."""
        self._usage(chunk.route).dropped += chunk.dropped
        self.counters.dropped += chunk.dropped
        self._episode(sink, sink.worker.down_reason or "queue full").dropped += chunk.dropped
        if not chunk.payloads:
            self._chunk_done(chunk)

    # ---- accounting ----------------------------------------------------------------
    def _account(self, sink: Sink | None, chunks: list[Chunk], now: float) -> None:
        """Count what chunks delivered, dropped for age, and finish them (ack when a batch is complete)."""
        for chunk in chunks:
            if chunk.trace is not None:
                self._publish_trace(chunk.trace)
            usage = self._usage(chunk.route)
            if chunk.delivered:
                usage.messages += chunk.delivered
                usage.bytes += chunk.delivered_bytes
                usage.last_used = now
                self.counters.delivered += chunk.delivered
            if chunk.expired:
                self._expired(sink, chunk, usage)
            self._chunk_done(chunk)

    def _expired(self, sink: Sink | None, chunk: Chunk, usage: RouteUsage) -> None:
        """Payloads that waited longer than the age bound: counted dropped, in the sink's episode."""
        usage.dropped += chunk.expired
        self.counters.dropped += chunk.expired
        self.counters.expired += chunk.expired
        if sink is not None:
            self._episode(sink, sink.worker.down_reason or f"payloads older than {sink.worker.max_age_s:g}s").expired += chunk.expired


def by_port_key(uuid: str, port: Any) -> str:
    """The sink key of a route target no peripheral has: its uuid and the route's outgoing_port."""
    return f"{uuid}{BY_PORT_SEPARATOR}{port}"


def main(argv: list[str] | None = None) -> int:
    return run_actor("router", Router, argv)
