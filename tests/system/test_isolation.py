"""A dead, stuck or slow sink delays no other route (issue 12, section 1).

Real processes on loopback: broker, state keeper, gateway and one router, sources on their data
ports, sinks that record what arrives. Each kind of bad sink (down, resetting, deaf, 1 line/s)
in both delivery modes shares two sources with two healthy sinks (two routes per source, and
fan-out from both sources into the bad sink). The healthy sinks must get everything, in order,
promptly; what the bad sink loses must be counted per route in /routes info.

Small bounds keep it quick: the gateway window is 200 payloads per source, so a router that
waits for the bad sink before acknowledging stalls the healthy routes within a fraction of the
2,000 lines sent per source.
"""
from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.router.sinks import MODE_MESSAGE, MODE_STREAM, Chunk, SinkAddress, SinkQueue, SinkWorker, framed_size
from tests.support.instances import Instance, free_port, start_instance, wait_until
from tests.support.fakes import DeafSink, LineSink, resetting_port, restarted, slow_reader
from tests.support.routing import (Reports, Source, add_route, add_sink, assert_in_order_without_loss, register_sink,
                                   route_counters, running_routers, stop_quietly)

LINES_PER_SOURCE = 2000
BURST = 200
PAD = b" " + b"p" * 1500  # big enough that a deaf stream sink's kernel buffers fill
PROMPT_S = 4.0  # all healthy lines delivered this soon after the last was sent (a stalled router needs 10+ s)
LOSS_TIMEOUT_S = 8.0
QUEUE_MESSAGES = 400  # two windows: a healthy sink fed by two sources never overflows
AGE_S = 3.0  # above TCP's 1 s SYN retry, which a healthy message-mode sink with a full backlog costs
WINDOW = 200
ISOLATION_CONFIG = {"router_queue_messages": QUEUE_MESSAGES, "router_queue_age_s": AGE_S, "gateway_window_messages": WINDOW}
LATE_AGE_S = 1.0
LATENESS_SLACK_S = 1.0  # a line's way from the router's check to the sink's reading it (one connection at 10 lines/s)
SLOW_BACK_SETTLE_S = 2.0
# Room in the accept queue for every connection one case opens to a sink in message mode (both sources fan in to the
# bad sink): with less, a fake starved of the GIL in this process lets its queue fill, the kernel drops SYNs, and the
# "resetting" sink becomes a sink that is also slow (connects wait for TCP's 1 s retries), which the "slow" case covers.
SINK_BACKLOG = 4096
UNIT_TIMEOUT_S = 5.0


class PaddedSource(Source):
    def send(self, count: int) -> None:
        first = self.sent + 1
        self.sent += count
        self.conn.sendall(b"".join(b"%d%s\n" % (n, PAD) for n in range(first, self.sent + 1)))


def bad_down(port: int) -> Any:
    return None  # nothing listens on the port


# A sink that resets its connections "takes" what the kernel accepted before the reset: loss the router cannot see.
SILENT_LOSS = {"resetting"}
BAD_SINKS: dict[str, Callable[[int], Any]] = {
    "down": bad_down,
    "resetting": lambda port: resetting_port(port, backlog=SINK_BACKLOG).start(),
    "deaf": lambda port: DeafSink(port).start(),
    "slow": lambda port: slow_reader(port, lines_per_s=1.0).start(),
}


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """One orchestrator for the matrix below; every case registers its own peripherals and removes its routes."""
    started = start_instance(tmp_path_factory.mktemp("isolation"), only=["broker", "state", "gateway", "router"], config=ISOLATION_CONFIG)
    try:
        yield started
    finally:
        started.stop()


def add_padded_sink(instance: Instance, name: str, mode: str) -> LineSink:
    """A sink for numbered lines with padding; a connection per message: a backlog that keeps the router's connects
    from waiting on SYN retries."""
    return add_sink(instance, name, mode, backlog=SINK_BACKLOG)


@pytest.mark.parametrize("mode", [MODE_MESSAGE, MODE_STREAM])
@pytest.mark.parametrize("kind", list(BAD_SINKS))
def test_a_bad_sink_delays_no_other_route_and_its_loss_is_counted(instance: Instance, kind: str, mode: str) -> None:
    tag = f"{kind}{mode}"
    bad_port = free_port()
    bad = BAD_SINKS[kind](bad_port)
    healthy = [add_padded_sink(instance, f"H1{tag}", mode), add_padded_sink(instance, f"H2{tag}", mode)]
    register_sink(instance, f"B{tag}", bad_port, mode)
    sources = [PaddedSource(instance, f"S1{tag}"), PaddedSource(instance, f"S2{tag}")]
    routes = []
    try:
        for index, (source, sink) in enumerate(zip(sources, healthy), start=1):
            add_route(instance, f"h{index}{tag}", source.name, f"H{index}{tag}")
            add_route(instance, f"b{index}{tag}", source.name, f"B{tag}")  # fan-in: both sources feed the bad sink
            routes += [f"h{index}{tag}", f"b{index}{tag}"]
        for source, sink in zip(sources, healthy):
            source.warm_up(sink)
        for _ in range(LINES_PER_SOURCE // BURST):
            for source in sources:
                source.send(BURST)
        sent_at = time.monotonic()
        for sink in healthy:
            wait_until(lambda: len(set(sink.numbers())) >= LINES_PER_SOURCE, PROMPT_S, 0.05,
                       f"every line at {kind} {mode}'s healthy sink on port {sink.port} within {PROMPT_S}s")
        assert time.monotonic() - sent_at < PROMPT_S
        for sink in healthy:
            assert_in_order_without_loss(sink.numbers(), LINES_PER_SOURCE)
        if kind in SILENT_LOSS:
            counted = wait_until(lambda: _bad_used(instance, tag), LOSS_TIMEOUT_S, 0.2, f"the {kind} sink's usage in /routes info")
        else:
            counted = wait_until(lambda: _bad_loss(instance, tag), LOSS_TIMEOUT_S, 0.2, f"the {kind} sink's loss in /routes info")
            losing = json.loads(instance.command("/status"))["Routes Losing"]
            assert set(losing) & {f"b1{tag}", f"b2{tag}"}, losing
        assert counted["h1"] == counted["h2"] == 0, f"a healthy route lost payloads: {counted}"
        assert not set(json.loads(instance.command("/status"))["Routes Losing"]) & {f"h1{tag}", f"h2{tag}"}
    finally:
        for name in routes:
            instance.command(f"/routes remove {name}")
        for thing in (*sources, *healthy, bad):
            stop_quietly(thing)


def _bad_used(instance: Instance, tag: str) -> dict[str, int] | None:
    """Dropped per route once the bad routes' usage reached /routes info (a sink that resets may lose nothing we can see)."""
    counters = route_counters(instance)
    if not any(counters.get(f"{key}{tag}", {}).get("messages", 0) + counters.get(f"{key}{tag}", {}).get("dropped", 0) for key in ("b1", "b2")):
        return None
    return {key: counters.get(f"{key}{tag}", {}).get("dropped", 0) for key in ("h1", "h2", "b1", "b2")}


def _bad_loss(instance: Instance, tag: str) -> dict[str, int] | None:
    """Dropped per route (keys h1, h2, b1, b2) once the bad routes show a loss."""
    counters = route_counters(instance)
    dropped = {key: counters.get(f"{key}{tag}", {}).get("dropped", 0) for key in ("h1", "h2", "b1", "b2")}
    return dropped if dropped["b1"] + dropped["b2"] > 0 else None


@pytest.fixture(scope="module")
def late_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """An orchestrator with a short age bound."""
    started = start_instance(tmp_path_factory.mktemp("late"), only=["broker", "state", "gateway", "router"],
                             config={"router_queue_age_s": LATE_AGE_S})
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("mode", [MODE_MESSAGE, MODE_STREAM])
def test_a_payload_older_than_the_age_bound_is_never_delivered_to_a_sink_that_comes_back(late_instance: Instance, mode: str) -> None:
    """The sink comes back just after the payloads passed the bound, between two retries: they are dropped, not sent."""
    instance = late_instance
    tag = f"late{mode}"
    port = free_port()
    register_sink(instance, f"Back{tag}", port, mode)
    fresh = add_padded_sink(instance, f"Fresh{tag}", mode)
    source = Source(instance, f"S{tag}")
    sink = LineSink(port)
    try:
        add_route(instance, f"back{tag}", source.name, f"Back{tag}")
        add_route(instance, f"fresh{tag}", source.name, f"Fresh{tag}")
        source.warm_up(fresh)  # the route to the sink that is down exists at the router now
        source.conn.sendall(b"".join(b"old-%d\n" % n for n in range(5)))
        time.sleep(LATE_AGE_S + 0.05)  # just older than the bound: the worker is most likely waiting for its next retry
        wait_until(lambda: restarted(sink), UNIT_TIMEOUT_S, 0.05, f"port {port} free for the sink")
        def fresh_arrived() -> bool:
            if any(line.startswith(b"new") for line in sink.snapshot()):
                return True
            source.conn.sendall(b"new\n")
            return False
        wait_until(fresh_arrived, PROMPT_S * 2, 0.1, "a fresh payload at the sink that came back")
        late = [line for line in sink.snapshot() if line != b"new"]
        assert late == [], f"payloads older than the age bound were delivered late: {late[:5]}"
        wait_until(lambda: route_counters(instance).get(f"back{tag}", {}).get("dropped", 0) >= 5, LOSS_TIMEOUT_S, 0.2,
                   "the expired payloads counted on their route")
    finally:
        for name in (f"back{tag}", f"fresh{tag}"):
            instance.command(f"/routes remove {name}")
        for thing in (source, fresh, sink):
            stop_quietly(thing)


def test_a_sink_that_comes_back_slowly_never_gets_payloads_older_than_the_age_bound(late_instance: Instance) -> None:
    """Down, then back at 10 lines/s: what aged in its queue while it drained is dropped, not delivered late."""
    instance, tag = late_instance, "slowback"
    port = free_port()
    register_sink(instance, f"Back{tag}", port, MODE_MESSAGE)
    fresh = add_padded_sink(instance, f"Fresh{tag}", MODE_MESSAGE)
    source = Source(instance, f"S{tag}")
    sink = None
    try:
        add_route(instance, f"back{tag}", source.name, f"Back{tag}")
        add_route(instance, f"fresh{tag}", source.name, f"Fresh{tag}")
        source.warm_up(fresh)
        source.conn.sendall(b"".join(b"t %.6f\n" % time.time() for _ in range(50)))
        time.sleep(LATE_AGE_S / 3)  # back before the bound: the payloads age while it drains them slowly
        sink = slow_reader(port, lines_per_s=10.0, backlog=1).start()
        wait_until(lambda: route_counters(instance).get(f"back{tag}", {}).get("dropped", 0) > 0, LOSS_TIMEOUT_S, 0.2,
                   "the payloads that aged while the sink drained, counted dropped")
        time.sleep(SLOW_BACK_SETTLE_S)
        lateness = [arrived - float(line.split()[1]) for line, arrived in sink.arrivals() if line.startswith(b"t ")]
        assert lateness, "the sink that came back got nothing"
        assert max(lateness) < LATE_AGE_S + LATENESS_SLACK_S, f"delivered {max(lateness):.1f}s after it was sent (bound {LATE_AGE_S}s)"
    finally:
        for name in (f"back{tag}", f"fresh{tag}"):
            instance.command(f"/routes remove {name}")
        for thing in (source, fresh, sink):
            stop_quietly(thing)


def test_router_sigkill_loses_nothing_for_a_healthy_sink_next_to_a_dead_one(instance: Instance) -> None:
    tag = "kill"
    healthy = add_padded_sink(instance, f"H{tag}", MODE_STREAM)
    register_sink(instance, f"B{tag}", free_port(), MODE_STREAM)  # nothing listens
    source = PaddedSource(instance, f"S{tag}")
    try:
        add_route(instance, f"h{tag}", source.name, f"H{tag}")
        add_route(instance, f"b{tag}", source.name, f"B{tag}")
        source.warm_up(healthy)
        source.send(500)
        old_pid = instance.child_pid("router-1")
        os.kill(old_pid, signal.SIGKILL)
        source.send(500)
        wait_until(lambda: instance.child_pid("router-1") not in (None, old_pid) and running_routers(instance) == ["router-1"],
                   15.0, 0.1, "the supervisor to restart router-1")
        source.send(500)
        wait_until(lambda: len(set(healthy.numbers())) >= 1500, 15.0, 0.05, "every line at the healthy sink")
        assert_in_order_without_loss(healthy.numbers(), 1500)
    finally:
        for name in (f"h{tag}", f"b{tag}"):
            instance.command(f"/routes remove {name}")
        for thing in (source, healthy):
            stop_quietly(thing)


# ---- the worker alone ------------------------------------------------------------------

def test_a_stream_write_blocked_on_a_sink_that_never_reads_times_out_at_the_age_bound() -> None:
    payload = b"x" * 65536
    with DeafSink() as deaf:
        reports, queue = Reports(), SinkQueue(max_messages=1000, max_bytes=1 << 30)
        worker = SinkWorker("deaf", SinkAddress("127.0.0.1", deaf.port, MODE_STREAM), queue, reports)
        worker.max_age_s = 0.3
        worker.start()
        try:
            for _ in range(200):  # 13 MB: far beyond what the kernel buffers between us hold
                queue.offer(Chunk("r", [payload], framed_size([payload])))
            wait_until(lambda: len(reports.chunks) == 200, UNIT_TIMEOUT_S, 0.02, "every chunk delivered or dropped, none waiting forever")
            delivered = sum(c.delivered for c in reports.chunks)
            assert delivered + sum(c.expired for c in reports.chunks) == 200 and delivered < 200

            def a_write_blocked_on_full_buffers_gave_up() -> Chunk | None:
                late = Chunk("r", [payload], framed_size([payload]))
                queue.offer(late)  # once the kernel buffers between us are full, this write blocks
                wait_until(lambda: late in reports.chunks, UNIT_TIMEOUT_S, 0.02, "the write to finish or give up")
                return late if late.expired == 1 and late.delivered == 0 else None

            wait_until(a_write_blocked_on_full_buffers_gave_up, UNIT_TIMEOUT_S, 0, "a blocked write to give up at the age bound")
            assert any(e.startswith("down: not reading") for e in reports.events), reports.events
            assert worker.stream is None  # closed: a half-written line is never completed later
        finally:
            worker.stop(1.0)


def test_message_mode_drops_what_aged_while_a_slow_sink_was_still_taking_earlier_payloads() -> None:
    with slow_reader(lines_per_s=10.0).start() as slow:
        reports, queue = Reports(), SinkQueue()
        worker = SinkWorker("slow", SinkAddress("127.0.0.1", slow.port, MODE_MESSAGE), queue, reports)
        worker.max_age_s = 0.3
        worker.start()
        try:
            queue.offer(Chunk("r", [b"%d" % n for n in range(300)], framed_size([b"%d" % n for n in range(300)])))
            wait_until(lambda: reports.chunks, UNIT_TIMEOUT_S, 0.02, "the chunk to finish")
            chunk = reports.chunks[0]
            assert chunk.expired > 0 and chunk.delivered + chunk.expired == 300
        finally:
            worker.stop(1.0)


def test_a_sink_holding_work_without_progress_reports_a_stall_and_an_idle_one_none() -> None:
    queue = SinkQueue()
    worker = SinkWorker("idle", SinkAddress("127.0.0.1", 1, MODE_MESSAGE), queue, Reports())  # not started: never takes
    now = time.monotonic()
    assert worker.stalled_for(now) == 0.0
    queue.offer(Chunk("r", [b"a"], 2))
    assert worker.stalled_for(time.monotonic() + 1.0) >= 1.0
    assert worker.stalled_for(time.monotonic()) < 0.5  # just queued: not a stall yet


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.binary(min_size=0, max_size=8).filter(lambda b: b"\n" not in b), min_size=1, max_size=5), min_size=1, max_size=5),
       st.floats(min_value=0.0, max_value=1.0))
def test_an_expired_stream_write_counts_whole_lines_written_as_delivered_and_the_rest_expired(payload_lists: list[list[bytes]], where: float) -> None:
    chunks = [Chunk("r", payloads, framed_size(payloads)) for payloads in payload_lists]  # queued_at 0: all older than the bound
    data = b"".join(b"\n".join(c.payloads) + b"\n" for c in chunks)
    offset = int(len(data) * where)
    worker = SinkWorker("k", SinkAddress("127.0.0.1", 1, MODE_STREAM), SinkQueue(), Reports())
    assert worker._expire_stream(chunks, data, offset) == (offset < len(data))
    if offset < len(data):
        assert sum(c.delivered for c in chunks) == data.count(b"\n", 0, offset)  # a half-written line is not delivered
        for chunk in chunks:
            assert chunk.delivered + chunk.expired == len(chunk.payloads)
            assert chunk.delivered_bytes == sum(map(len, chunk.payloads[:chunk.delivered]))
