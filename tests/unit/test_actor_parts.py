"""The gateway's and the router's parts, each run on its own: no process, no bus, fakes for what each is given.

Each part takes its collaborators in its constructor (a send, a request, a wake-up, the data plane's submit), so
these tests build one with fakes and check what it promises; none of them could run while the parts were mixins.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from actors.core.errors import Unavailable
from actors.core.protocol import DataAck, Op, decode_as
from actors.core.refusals import RefusalLog
from actors.core.replica import StateReplica
from actors.gateway.admission import Admission
from actors.gateway.connection import HOLD_BACKPRESSURE
from actors.gateway.ingress import ACTIVITY_REPORT_INTERVAL_S, Ingress
from actors.gateway.listeners import Listeners
from actors.router.acks import Acks, BatchTracker
from actors.router.sinks import Chunk
from actors.router.usage import FINAL_FLUSH_TIMEOUT_S, Usage

WAIT_S = 2.0  # every wait in these tests is bounded by this


# ---- router: acks ------------------------------------------------------------------------

def _chunks(source: str, sizes: list[int], epoch: str = "e1") -> list[tuple[BatchTracker, list[Chunk]]]:
    """Batches of source numbered back to back, one chunk per route (sizes: payloads per batch, 2 routes each)."""
    batches, seq = [], 0
    for size in sizes:
        tracker = BatchTracker(source, seq + size - 1, pending=2, epoch=epoch)
        batches.append((tracker, [Chunk(route, [b"x"] * size, 2 * size, tracker) for route in ("r1", "r2")]))
        seq += size
    return batches


def _sent_acks(bodies: list[bytes]) -> list[DataAck]:
    return [decode_as(body, DataAck) for body in bodies]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8), order=st.randoms(use_true_random=False))
def test_acks_never_cover_an_unsettled_batch_whatever_the_order(sizes: list[int], order: Any) -> None:
    """Chunks settle in any order (and some twice): each ack covers only batches whose chunks all settled, acks only
    grow, and the last one is the last batch's last seq."""
    acks = Acks()
    batches = _chunks("src", sizes)
    for tracker, _ in batches:
        assert acks.book.add(tracker) is None
    chunks = [chunk for _, pair in batches for chunk in pair]
    order.shuffle(chunks)
    settled: set[int] = set()
    last = -1
    for chunk in chunks + chunks[: len(chunks) // 2]:  # the repeats must change nothing
        acks.chunk_done(chunk)
        settled.add(id(chunk))
        seq = acks.due.get(("src", "e1"))
        if seq is None or seq == last:
            continue
        assert seq > last
        for tracker, pair in batches:
            if tracker.last_seq <= seq:
                assert all(id(c) in settled for c in pair), "an ack covered a batch still in a sink's queue"
        last = seq
    assert last == batches[-1][0].last_seq
    assert acks.outstanding() == 0


def test_ack_sender_coalesces_per_stream_and_stops_at_a_slow_send() -> None:
    """One message per (source, epoch) however many batches settled; a final send that hangs is cut at the bound."""
    sent: list[bytes] = []

    async def send(body: bytes) -> None:
        sent.append(body)

    async def never(body: bytes) -> None:
        await asyncio.sleep(3600)

    async def scenario() -> None:
        acks = Acks()
        for source, epoch in (("a", "e1"), ("a", "e2"), ("b", "e1")):
            for tracker, pair in _chunks(source, [3, 3, 3], epoch):
                acks.book.add(tracker)
                for chunk in pair:
                    acks.chunk_done(chunk)
        sender = asyncio.create_task(acks.run(send))
        await asyncio.wait_for(_until(lambda: len(sent) >= 3), WAIT_S)
        sender.cancel()
        assert sorted((a.source, a.epoch, a.seq) for a in _sent_acks(sent)) == [("a", "e1", 8), ("a", "e2", 8),
                                                                              ("b", "e1", 8)]
        assert acks.sent == 3 and not acks.due
        acks.ack(("c", "e1"), 0)
        with pytest.raises(asyncio.TimeoutError):
            await acks.send_final(never, 0.05)

    asyncio.run(scenario())


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.001)


# ---- router: usage -----------------------------------------------------------------------

class FakeKeeper:
    """The state keeper's request as Usage sees it: records each report, fails while told to."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.failing = False

    async def request(self, op: Op, **args: Any) -> Any:
        assert op is Op.ROUTE_USAGE
        if self.failing:
            raise Unavailable("keeper down (test)")
        self.reports.append(args)
        return {}


def test_usage_counts_reports_and_keeps_what_a_failed_report_carried() -> None:
    """The first route counted wakes the timer once; a report the keeper missed goes with the next one, summed."""
    keeper, wakes = FakeKeeper(), []
    usage = Usage(keeper.request, lambda: wakes.append(1), "router-t")

    async def scenario() -> None:
        usage.of("r1").messages += 10
        usage.of("r1").bytes += 100
        usage.of("r2").dropped += 2
        assert wakes == [1]
        keeper.failing = True
        usage.flush(2.0)
        await asyncio.wait_for(usage.task, WAIT_S)
        assert not keeper.reports
        keeper.failing = False
        usage.of("r1").messages += 5
        usage.flush(1.0)
        await asyncio.wait_for(usage.task, WAIT_S)
        report = keeper.reports[-1]["usage"]
        assert report["r1"]["messages"] == 15 and report["r1"]["bytes"] == 100 and report["r1"]["rate"] == 15.0
        assert report["r2"]["dropped"] == 2
        assert usage.sent == 1

    asyncio.run(scenario())


def test_usage_rate_falls_to_zero_once_then_the_route_is_forgotten() -> None:
    keeper = FakeKeeper()
    usage = Usage(keeper.request, lambda: None)
    usage.of("r1").messages += 4
    assert usage.take(2.0)["r1"]["rate"] == 2.0
    assert usage.take(2.0)["r1"]["rate"] == 0.0  # quiet since: its reported rate must fall
    assert usage.take(2.0) == {} and usage.routes == {}


def test_usage_final_flush_sends_only_routes_with_traffic_bounded() -> None:
    keeper = FakeKeeper()
    usage = Usage(keeper.request, lambda: None)
    usage.of("quiet").reported_rate = 3.0
    usage.of("busy").filtered += 1

    asyncio.run(usage.final_flush())
    assert list(keeper.reports[-1]["usage"]) == ["busy"]
    assert keeper.reports[-1]["timeout"] == FINAL_FLUSH_TIMEOUT_S


# ---- gateway: ingress with a fake data plane ---------------------------------------------

class FakePlane:
    """submit and paused as the data plane offers them."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, list[bytes]]] = []
        self.paused_sources: set[str] = set()

    def submit(self, source: str, payloads: list[bytes]) -> None:
        self.submitted.append((source, payloads))

    def paused(self, source: str) -> bool:
        return source in self.paused_sources


class FakeConnection:
    def __init__(self) -> None:
        self.holds: set[str] = set()

    def hold(self, reason: str) -> None:
        self.holds.add(reason)

    def release(self, reason: str) -> None:
        self.holds.discard(reason)


def _ingress(routes: dict[str, str], peripherals: list[str]) -> tuple[Ingress, FakePlane, dict[str, int]]:
    replica = StateReplica()
    replica.routes = {name: {"name": name, "incoming": source} for name, source in routes.items()}
    replica.peripherals = {uuid: {"uuid": uuid} for uuid in peripherals}
    counters = {"payloads_in": 0, "unknown_source": 0, "no_route": 0}
    plane = FakePlane()
    ingress = Ingress(replica, counters, plane.submit, plane.paused)
    ingress.routes_changed()
    return ingress, plane, counters


def test_ingress_batches_one_pass_per_source_and_drops_what_has_no_route(caplog: pytest.LogCaptureFixture) -> None:
    """Payloads of one source from many calls in one loop pass leave as one submit, in order; unknown and unrouted
    sources are counted (never submitted) and reported in one line per interval."""
    ingress, plane, counters = _ingress({"r": "src"}, ["src", "idle"])

    async def scenario() -> None:
        for i in range(5):
            ingress.ingest("src", [b"%d" % i])
        ingress.ingest("stranger", [b"x", b"y"])
        ingress.ingest("idle", [b"z"])
        assert plane.submitted == []  # not per call: at the end of the pass
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert plane.submitted == [("src", [b"0", b"1", b"2", b"3", b"4"])]
    assert counters == {"payloads_in": 8, "unknown_source": 2, "no_route": 1}
    assert ingress.sources_seen == {"src", "idle"}
    ingress.next_report = 0.0
    before = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="actors.gateway.ingress"):
        ingress.report_drops()
        ingress.report_drops()  # within the interval: nothing more
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "2 lines from unknown sources (stranger)" in lines[0] and "1 lines with no route" in lines[0]
    assert ingress.next_report >= before + ACTIVITY_REPORT_INTERVAL_S  # the next line waits a whole interval


def test_ingress_holds_a_paused_sources_connections_until_the_plane_resumes_it() -> None:
    ingress, plane, _ = _ingress({"r": "src"}, [])
    plane.paused_sources.add("src")
    conns = [FakeConnection(), FakeConnection()]

    async def scenario() -> None:
        for conn in conns:
            ingress.ingest("src", [b"p"], conn)  # type: ignore[arg-type]
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert all(conn.holds == {HOLD_BACKPRESSURE} for conn in conns)
    ingress.source_paused("src", True)
    assert all(conn.holds for conn in conns)
    ingress.source_paused("src", False)
    assert all(not conn.holds for conn in conns)


# ---- gateway: listeners ------------------------------------------------------------------

def test_listeners_retry_a_port_held_elsewhere_until_it_is_freed() -> None:
    """A port another socket holds is reported (not fatal), the others are served, and it is bound once freed."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    held = squatter.getsockname()[1]
    opened: list[str] = []

    async def scenario() -> None:
        listeners = Listeners(lambda role: (opened.append(role), asyncio.Protocol())[1])
        config = {"command_port": held, "data_port_range": ""}
        await listeners.reconcile("127.0.0.1", config)
        assert listeners.figures() == {"listening": 0, "bind_failures": 1,
                                       "failed_binds": {str(held): "held by another process"}}
        squatter.close()
        listeners.next_bind_retry = 0.0
        listeners.maybe_retry(config)
        assert listeners.rebind is not None
        await asyncio.wait_for(listeners.rebind, WAIT_S)
        assert listeners.figures()["listening"] == 1 and listeners.retry_due_in(0.0) is None
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", held), WAIT_S)
        await asyncio.wait_for(_until(lambda: opened == ["command"]), WAIT_S)
        writer.close()
        listeners.close()

    try:
        asyncio.run(scenario())
    finally:
        squatter.close()


# ---- gateway: admission ------------------------------------------------------------------

def test_admission_refuses_outside_allowed_clients_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A client outside allowed_clients gets a closing error each time; counted every time, logged once a minute."""
    counters = {"refused_clients": 0, "connections_refused": 0, "connections_refused_per_address": 0}
    admission = Admission(counters, RefusalLog())
    admission.configure({"allowed_clients": ["127.0.0.1"], "admin_clients": ["127.0.0.1"]})
    with caplog.at_level(logging.WARNING, logger="actors.gateway.admission"):
        for _ in range(3):
            peer, refusal = admission.admit("127.0.0.2", 40000, "127.0.0.1")
            assert refusal is not None and refusal.close and not peer.admin
    assert counters["refused_clients"] == 3
    assert len([r for r in caplog.records if "not in allowed_clients" in r.getMessage()]) == 1
    peer, refusal = admission.admit("127.0.0.1", 40001, "127.0.0.1")
    assert refusal is None and peer.admin
    admission.release_slot(peer)
