"""Fan-out: each DataBatch from the gateway to the queue of every route's sink, the router's per-batch hot path.

``Fanout`` reads the replica's routes (an index rebuilt lazily after a table change) and hands chunks to the
``SinkSet``; it tracks each batch in ``Acks`` and shows it to ``Taps``. All of that is per batch and per route:
nothing here runs once per payload except a route's own filter/transform.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import zmq.asyncio

from ..core.protocol import TAP_PERIPHERAL, TAP_ROUTE, DataBatch, ProtocolError, decode_as
from ..core.replica import StateReplica
from ..core.rules import RouteRules, RuleError
from .acks import Acks, BatchTracker
from .sinks import Chunk, framed_size
from .sinkset import Counters, SinkSet
from .taps import Taps
from .usage import Usage

log = logging.getLogger(__name__)

# Batches handled before the data reader lets the rest of the loop run.
READER_YIELD_EVERY = 64
TRACE_INTERVAL_S = 0.002  # while a latency trace is watched: at most one sampled batch this often
TRACE_HEAD_BYTES = 48  # of the batch's first payload, so the watcher can tell which payload a trace follows

Fan = list[tuple[str, str, RouteRules | None]]  # (route, sink key, rules or None) per route of a source


class Fanout:
    """The routes of each source, and one batch handed to each of their sinks (acked at once when it has none)."""

    def __init__(self, replica: StateReplica, counters: Counters, sinks: SinkSet, acks: Acks, usage: Usage,
                 taps: Taps) -> None:
        self.replica = replica
        self.counters = counters
        self.sinks = sinks
        self.acks = acks
        self.usage = usage
        self.taps = taps
        self.fanout: dict[str, Fan] = {}
        self.compiled_rules: dict[tuple[str, str], RouteRules | None] = {}
        self.dirty = True
        self.trace_recv = 0.0
        self.next_trace = 0.0

    def tables_changed(self) -> None:
        """Routes or peripherals changed: the index is rebuilt at the next batch."""
        self.dirty = True

    def routes_for(self, source: str) -> Fan:
        """(route, sink key, rules or None) for every route leaving source; rebuilt after a table change."""
        if self.dirty:
            fanout: dict[str, Fan] = {}
            for route in self.replica.routes.values():
                fanout.setdefault(route["incoming"], []).append((route["name"], self.sinks.key_of(route),
                                                                 self._rules_of(route)))
            self.fanout = fanout
            self.dirty = False
        return self.fanout.get(source, [])

    def _rules_of(self, route: dict[str, Any]) -> RouteRules | None:
        """Compiled once per rule text; a rule that does not compile (hand edit) delivers nothing, logged once."""
        key = (route.get("filter") or "", route.get("transform") or "")
        if key not in self.compiled_rules:
            try:
                rules = RouteRules.of(route)
                self.compiled_rules[key] = None if rules.plain else rules
            except RuleError as exc:
                log.error("route %s has a rule that does not compile (%s): it delivers nothing until fixed",
                          route["name"], exc)
                self.compiled_rules[key] = RouteRules(keep=lambda _payload: False)
        return self.compiled_rules[key]

    async def read(self, dealer: zmq.asyncio.Socket) -> None:
        """The data reader: every batch the gateway sends us, letting the loop run every READER_YIELD_EVERY."""
        handled = 0
        while True:
            frames = await dealer.recv_multipart()
            if self.taps.tracing:
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
        routes = self.routes_for(batch.source)
        taps = self.taps
        tapped = bool(taps.routes or taps.sources)
        if tapped and batch.source in taps.sources:
            taps.publish(TAP_PERIPHERAL, batch.source, batch, payloads)
        tracker = BatchTracker(batch.source, batch.seq + len(payloads) - 1, pending=len(routes) if payloads else 0,
                               epoch=batch.epoch)
        acks = self.acks
        seq = acks.book.add(tracker)  # the book itself: no extra call per batch on the hot path
        if seq is not None:
            acks.ack(tracker.stream, seq)
            return
        nbytes = framed_size(payloads)
        trace = self._sample(batch) if taps.tracing else None
        sinks, by_key, settle = self.sinks, self.sinks.sinks, acks.chunk_done
        for route, sink_key, rules in routes:
            chunk = (Chunk(route, payloads, nbytes, tracker) if rules is None
                     else self._ruled_chunk(route, rules, batch, tracker))
            if trace is not None and chunk.payloads:
                chunk.trace = [*trace, time.time()]  # handed to the sink (a direct write, or its worker's queue)
            if tapped and route in taps.routes:
                taps.publish(TAP_ROUTE, route, batch, chunk.payloads)
            if not chunk.payloads:
                settle(chunk)
                continue
            sink = by_key.get(sink_key) or sinks.create(sink_key)
            if sink.queue.offer(chunk, sink.worker.try_direct):
                sinks.dropped_at_enqueue(sink, chunk)
            elif not chunk.queued_at:  # written directly, nothing queued
                self.counters.direct += 1
                sinks.account(sink, [chunk], time.time())
                continue
            if sink.parked:
                settle(chunk)  # parked: the other routes of this batch need not wait for it

    def _sample(self, batch: DataBatch) -> list | None:
        """[first payload's head, sent by the gateway, received here] for one batch per TRACE_INTERVAL_S, else None."""
        if self.trace_recv < self.next_trace or not batch.payloads:
            return None
        self.next_trace = self.trace_recv + TRACE_INTERVAL_S
        return [batch.payloads[0][:TRACE_HEAD_BYTES], batch.received_at, self.trace_recv]

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
            self.usage.of(route).filtered += filtered
            self.counters.filtered += filtered
        return Chunk(route, kept, framed_size(kept), tracker)
