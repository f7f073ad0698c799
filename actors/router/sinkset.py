"""The router's set of sinks: one queue and worker thread each, created on demand, parked when not keeping up.

Isolation: a sink that is down, or whose oldest payload waited longer than ``router_stall_s``, is *parked*:
its queued chunks are settled at once, so the gateway's per-source window never waits for it and every other
route of the same sources keeps its pace. Each trouble episode gets one line when it starts and one when it ends.

``SinkSet`` reads the replica (where each sink is, its bounds), counts what its sinks deliver or lose (``Counters``,
the routes' ``Usage``) and settles chunks through the callback it is given (the router's acks).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..core.bus import FILE_ONLY
from ..core.net import LOCAL_HOST, is_own_listener
from ..core.replica import StateReplica
from ..core.settings import MAX_PORT, MIN_PORT, sink_max_age, tunable
from .sinks import MODE_MESSAGE, MODE_STREAM, Chunk, SinkAddress, SinkQueue, SinkWorker
from .usage import RouteUsage, Usage

log = logging.getLogger(__name__)

# A sink's trouble episode ends (one summary line) once it caught up and lost nothing for this long.
EPISODE_QUIET_S = 2.0
# Joins a route target's uuid and port in the sink key of a target no peripheral has (a uuid has no "@").
BY_PORT_SEPARATOR = "@"


@dataclass
class Counters:
    """The router's data-path figures (its heartbeat's), shared by the fan-out and the sink set."""

    delivered: int = 0
    dropped: int = 0
    expired: int = 0
    direct: int = 0
    batches: int = 0
    malformed: int = 0
    filtered: int = 0


@dataclass
class Episode:
    """A time a sink was not keeping up (down, stalled, or losing payloads): logged when it starts and ends."""

    reason: str
    started: float  # time.monotonic()
    dropped: int = 0  # beyond the queue bound
    expired: int = 0  # older than the age bound
    last_trouble: float = 0.0  # time.monotonic() of the last loss or stall seen

    def quiet_since(self, now: float) -> float:
        return now - max(self.started, self.last_trouble)


@dataclass
class Sink:
    """A sink peripheral as the router sees it: its queue, worker and trouble episode."""

    uuid: str
    label: str
    queue: SinkQueue
    worker: SinkWorker
    parked: bool = False  # not keeping up: its chunks no longer hold back acks
    episode: Episode | None = None


class SinkSet:
    """Sinks by key: where each is, their episodes, parking, creation and reaping, and what their workers report."""

    def __init__(self, replica: StateReplica, counters: Counters, usage: Usage, settle: Callable[[Chunk], None],
                 on_trace: Callable[[list], None], wake: Callable[[], None]) -> None:
        self.replica = replica
        self.counters = counters
        self.usage = usage
        self.settle = settle  # a chunk is done for its batch's ack (delivered, dropped, or parked)
        self.on_trace = on_trace  # a sampled chunk's stage times, once written
        self.wake = wake  # the housekeeping loop watches a sink in trouble from now on
        self.loop: asyncio.AbstractEventLoop | None = None  # where the workers' reports are handled
        self.sinks: dict[str, Sink] = {}
        self.stall_s = float(tunable({}, "router_stall_s"))
        self.own_listener_sinks: set[str] = set()  # sinks recorded on our own command or data ports (reported once)

    # ---- the set ----------------------------------------------------------------------
    def create(self, uuid: str) -> Sink:
        """A new sink (queue and worker thread), on a route's first payload for it."""
        peripheral = self.replica.peripherals.get(uuid)
        label = f"{peripheral.get('name')}:{peripheral.get('port')}" if peripheral else f"{uuid[:8]} (by port)"
        queue = SinkQueue(*self._queue_bounds())
        worker = SinkWorker(uuid, self._address_of(uuid), queue, self._report_from_thread)
        worker.max_age_s = self._max_age_of(uuid)
        sink = Sink(uuid=uuid, label=label, queue=queue, worker=worker)
        self.sinks[uuid] = sink
        worker.start()
        return sink

    def tables_changed(self) -> None:
        """Routes, peripherals or config changed: refresh every sink's address and bounds now."""
        self.stall_s = float(tunable(self.replica.config, "router_stall_s"))
        for sink in self.sinks.values():
            sink.worker.address = self._address_of(sink.uuid)
            sink.worker.max_age_s = self._max_age_of(sink.uuid)
            sink.queue.max_messages, sink.queue.max_bytes = self._queue_bounds()

    def reap_idle(self) -> None:
        """Stop the worker of a sink no route leads to any more, once its queue is empty."""
        wanted = {self.key_of(route) for route in self.replica.routes.values()}
        for uuid in [u for u, s in self.sinks.items() if u not in wanted and s.queue.messages == 0]:
            self.sinks.pop(uuid).worker.stop()

    def stop(self, join_s: float) -> None:
        """Tell every worker to stop, then wait for each (bounded by join_s)."""
        for sink in self.sinks.values():
            sink.worker.stop()
        for sink in self.sinks.values():
            sink.worker.stop(join_s)

    def watching(self) -> bool:
        """Whether a sink has payloads queued or is in trouble (housekeeping then runs on a short tick)."""
        return any(s.queue.messages or s.parked or s.episode is not None or s.worker.down_reason is not None
                   for s in self.sinks.values())

    def draining(self) -> bool:
        """Whether a sink that is up still has payloads queued (a graceful stop waits for them, bounded)."""
        return any(s.queue.messages and not s.parked and s.worker.down_reason is None for s in self.sinks.values())

    def figures(self) -> dict[str, int]:
        return {"queued": sum(s.queue.messages for s in self.sinks.values()), "sinks": len(self.sinks),
                "parked": sum(1 for s in self.sinks.values() if s.parked)}

    # ---- where a sink is --------------------------------------------------------------
    def key_of(self, route: dict[str, Any]) -> str:
        """The sink a route delivers to: its outgoing peripheral, or, for a uuid no peripheral has, its port."""
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

    # ---- trouble ------------------------------------------------------------------------
    def _episode(self, sink: Sink, reason: str) -> Episode:
        """The sink's current trouble episode; starting one logs the one warning it gets."""
        now = time.monotonic()
        if sink.episode is not None:
            sink.episode.last_trouble = now
        else:
            sink.episode = Episode(reason, now)
            log.warning("sink %s is not keeping up (%s); the other routes go on without it; it keeps at most "
                        "%d messages / %d bytes / %gs (router_queue_*), the rest is dropped and counted per route",
                        sink.label, reason, sink.queue.max_messages, sink.queue.max_bytes, sink.worker.max_age_s)
        return sink.episode

    def watch(self, now: float) -> None:
        """Each tick: drop what aged in every queue, park the sinks that stalled, end the episodes of the ones back."""
        for sink in self.sinks.values():
            stale = sink.queue.expire(now - sink.worker.max_age_s)
            if stale:
                self.account(sink, stale, time.time())
            stalled_s = sink.worker.stalled_for(now)
            if not sink.parked and stalled_s > self.stall_s:
                self._park(sink, sink.worker.down_reason or f"payloads waiting {stalled_s:.1f}s")
            elif sink.queue.messages == 0 and sink.worker.down_reason is None and (
                    sink.episode is None or sink.episode.quiet_since(now) >= EPISODE_QUIET_S):
                self._caught_up(sink, now)
            elif stalled_s > self.stall_s and sink.episode is not None:
                sink.episode.last_trouble = now

    def _park(self, sink: Sink, reason: str) -> None:
        """Settle everything the sink holds: its sources' acks stop waiting for it until it caught up."""
        sink.parked = True
        self._episode(sink, reason)
        for chunk in sink.queue.held():
            self.settle(chunk)

    def _caught_up(self, sink: Sink, now: float) -> None:
        """The sink's queue is empty and it is up: unpark it and close its episode with what it lost."""
        sink.parked = False
        episode, sink.episode = sink.episode, None
        if episode is not None:
            # The episode's one activity line was its start; its tally is in /routes info, /status and the UI.
            log.info("sink %s caught up after %.1fs; lost %d payloads (%d beyond the queue bound, %d older than %gs)",
                     sink.label, now - episode.started, episode.dropped + episode.expired, episode.dropped,
                     episode.expired, sink.worker.max_age_s, extra=FILE_ONLY)

    # ---- accounting ---------------------------------------------------------------------
    def _report_from_thread(self, worker: SinkWorker, chunks: list[Chunk], event: str | None) -> None:
        """Called in a sink thread: hand the report to the event loop (the only thread that counts and logs)."""
        assert self.loop is not None
        try:
            self.loop.call_soon_threadsafe(self._on_report, worker, chunks, event)
        except RuntimeError:
            pass  # the loop is closed: we are shutting down

    def _on_report(self, worker: SinkWorker, chunks: list[Chunk], event: str | None) -> None:
        sink = self.sinks.get(worker.key)
        if event is not None and event != "up" and sink is not None:
            self._episode(sink, event)  # up again: the episode ends once the sink caught up (watch)
            self.wake()  # housekeeping watches this sink from now on
        self.account(sink, chunks, time.time())

    def account(self, sink: Sink | None, chunks: list[Chunk], now: float) -> None:
        """Count what chunks delivered, dropped for age, and finish them (ack when a batch is complete)."""
        for chunk in chunks:
            if chunk.trace is not None:
                self.on_trace(chunk.trace)
            usage = self.usage.of(chunk.route)
            if chunk.delivered:
                usage.messages += chunk.delivered
                usage.bytes += chunk.delivered_bytes
                usage.last_used = now
                self.counters.delivered += chunk.delivered
            if chunk.expired:
                self._expired(sink, chunk, usage)
            self.settle(chunk)

    def _expired(self, sink: Sink | None, chunk: Chunk, usage: RouteUsage) -> None:
        """Payloads that waited longer than the age bound: counted dropped, in the sink's episode."""
        usage.dropped += chunk.expired
        self.counters.dropped += chunk.expired
        self.counters.expired += chunk.expired
        if sink is not None:
            reason = sink.worker.down_reason or f"payloads older than {sink.worker.max_age_s:g}s"
            self._episode(sink, reason).expired += chunk.expired

    def dropped_at_enqueue(self, sink: Sink, chunk: Chunk) -> None:
        """Count a tail drop in the sink's episode; finish the chunk if nothing of it was queued."""
        self.usage.of(chunk.route).dropped += chunk.dropped
        self.counters.dropped += chunk.dropped
        self._episode(sink, sink.worker.down_reason or "queue full").dropped += chunk.dropped
        if not chunk.payloads:
            self.settle(chunk)


def by_port_key(uuid: str, port: Any) -> str:
    """The sink key of a route target no peripheral has: its uuid and the route's outgoing_port."""
    return f"{uuid}{BY_PORT_SEPARATOR}{port}"
