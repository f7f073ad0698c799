"""The router's set of sinks: one queue and worker thread each, created on demand, parked when not keeping up.

Isolation: a sink that is down, or whose oldest payload waited longer than ``router_stall_s``, is *parked*:
its queued chunks are settled at once, so the gateway's per-source window never waits for it and every other
route of the same sources keeps its pace. Each trouble episode gets one line when it starts and one when it ends.

A mixin of ``Router``: it uses the router's replica, loop, wake event and accounting.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .sinks import Chunk, SinkQueue, SinkWorker

log = logging.getLogger(__name__)

# A sink's trouble episode ends (one summary line) once it caught up and lost nothing for this long.
EPISODE_QUIET_S = 2.0


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
    """Sinks by key (``Router.sinks``): their episodes, parking, creation and reaping, and their workers' reports."""

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

    def _watch_sinks(self, now: float) -> None:
        """Each tick: drop what aged in all queues, park sinks that stalled, end episodes of those that caught up."""
        for sink in self.sinks.values():
            stale = sink.queue.expire(now - sink.worker.max_age_s)
            if stale:
                self._account(sink, stale, time.time())
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
            self._chunk_done(chunk)

    def _caught_up(self, sink: Sink, now: float) -> None:
        """The sink's queue is empty and it is up: unpark it and close its episode with what it lost."""
        sink.parked = False
        episode, sink.episode = sink.episode, None
        if episode is not None:
            log.info("sink %s caught up after %.1fs; lost %d payloads (%d beyond the queue bound, %d older than %gs)",
                     sink.label, now - episode.started, episode.dropped + episode.expired, episode.dropped,
                     episode.expired, sink.worker.max_age_s)

    def _new_sink(self, uuid: str) -> Sink:
        peripheral = self.replica.peripherals.get(uuid)
        label = f"{peripheral.get('name')}:{peripheral.get('port')}" if peripheral else f"{uuid[:8]} (by port)"
        queue = SinkQueue(*self._queue_bounds())
        worker = SinkWorker(uuid, self._address_of(uuid), queue, self._report_from_thread)
        worker.max_age_s = self._max_age_of(uuid)
        sink = Sink(uuid=uuid, label=label, queue=queue, worker=worker)
        self.sinks[uuid] = sink
        worker.start()
        return sink

    def _reap_idle_sinks(self) -> None:
        """Stop the worker of a sink no route leads to any more, once its queue is empty."""
        wanted = {self._sink_key(route) for route in self.replica.routes.values()}
        for uuid in [u for u, s in self.sinks.items() if u not in wanted and s.queue.messages == 0]:
            self.sinks.pop(uuid).worker.stop()

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
            self._episode(sink, event)  # up again: the episode ends once the sink caught up (_watch_sinks)
            self.wake.set()  # housekeeping watches this sink from now on
        self._account(sink, chunks, time.time())
