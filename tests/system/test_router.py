"""The data router: queueing and backoff with fakes, then a real router process between a fake gateway and fake sinks."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from actors.core.protocol import DataAck, DataBatch, Heartbeat, Op, Tap, Topic, decode, decode_as, encode, tap_topic
from actors.router.acks import AckBook, BatchTracker
from actors.router.sinks import MODE_MESSAGE, MODE_STREAM, Backoff, Chunk, SinkAddress, SinkQueue, SinkWorker, framed_size
from tests.support.instances import REPO_ROOT, Instance, free_port, start_instance, wait_until
from tests.support.fakes import LineSink, restarted
from tests.support.routing import Reports

TIMEOUT_S = 10.0


def wait_lines(sink: LineSink, count: int) -> list[bytes]:
    """An ack means handed to the sink's socket; the sink reads a moment later."""
    wait_until(lambda: sink.count() >= count, TIMEOUT_S, message=f"{count} lines at the sink on port {sink.port}")
    return sink.snapshot()


def chunk(payloads: list[bytes], route: str = "r", token: object = None) -> Chunk:
    return Chunk(route, list(payloads), framed_size(payloads), token)


# ---- units: queue, backoff, acks -------------------------------------------------------

def test_queue_keeps_what_fits_and_counts_the_rest_dropped() -> None:
    queue = SinkQueue(max_messages=5, max_bytes=1000)
    first, second = chunk([b"a"] * 3), chunk([b"b"] * 4)
    assert queue.offer(first) == 0
    assert queue.offer(second) == 2
    assert second.payloads == [b"b", b"b"] and second.dropped == 2
    assert queue.messages == 5


def test_queue_bound_in_bytes_drops_the_tail() -> None:
    queue = SinkQueue(max_messages=100, max_bytes=10)
    big = chunk([b"1234", b"5678", b"9"])  # 5 + 5 + 2 framed bytes
    assert queue.offer(big) == 1
    assert big.payloads == [b"1234", b"5678"] and queue.nbytes == 10


def test_queue_fully_dropped_chunk_is_not_queued() -> None:
    queue = SinkQueue(max_messages=1, max_bytes=1000)
    queue.offer(chunk([b"x"]))
    late = chunk([b"y", b"z"])
    assert queue.offer(late) == 2 and not late.payloads and len(queue.chunks) == 1


def test_queue_take_groups_chunks_up_to_the_byte_limit_and_release_frees_room() -> None:
    queue = SinkQueue(max_messages=100, max_bytes=1000)
    for _ in range(3):
        queue.offer(chunk([b"12345678"]))  # 9 bytes each
    taken = queue.take(max_bytes=20, timeout=0)
    assert len(taken) == 2
    assert queue.take(max_bytes=0, timeout=0) and queue.messages == 3  # head alone, however big
    queue.release(taken)
    assert queue.messages == 1


def test_backoff_doubles_up_to_the_cap_and_resets_on_success() -> None:
    backoff = Backoff(initial_s=0.1, maximum_s=0.5)
    assert [backoff.failure() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.success()
    assert backoff.failure() == 0.1


def test_acks_cover_a_batch_only_when_every_earlier_batch_is_done() -> None:
    book = AckBook()
    first, second = BatchTracker("s", 10, pending=2), BatchTracker("s", 20, pending=1)
    book.add(first)
    book.add(second)
    assert book.chunk_done(second) is None  # done, but batch 1 is still out
    assert book.chunk_done(first) is None
    assert book.chunk_done(first) == 20
    assert book.outstanding() == 0


def test_batch_without_routes_is_acknowledged_at_once_unless_an_earlier_one_waits() -> None:
    book = AckBook()
    assert book.add(BatchTracker("s", 5, pending=0)) == 5
    waiting = BatchTracker("s", 6, pending=1)
    book.add(waiting)
    assert book.add(BatchTracker("s", 7, pending=0)) is None
    assert book.chunk_done(waiting) == 7


class FakeConnection:
    def __init__(self, log: list[bytes]) -> None:
        self.log = log

    def sendall(self, data: bytes) -> None:
        self.log.append(data)

    def settimeout(self, value: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class FlakyConnector:
    """Refuses the first `failures` connects, then records what each connection got."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self.sent: list[bytes] = []

    def connect(self, address: SinkAddress) -> FakeConnection:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise ConnectionRefusedError(111, "Connection refused")
        return FakeConnection(self.sent)


def run_worker(connector: FlakyConnector, payloads: list[bytes], backoff: Backoff | None = None) -> Reports:
    reports = Reports()
    queue = SinkQueue()
    worker = SinkWorker("k", SinkAddress("127.0.0.1", 1, MODE_MESSAGE), queue, reports, connector, backoff).start()
    try:
        queue.offer(chunk(payloads))
        wait_until(lambda: reports.chunks, TIMEOUT_S, message="the chunk to be reported")
    finally:
        worker.stop(1.0)
    return reports


def test_worker_delivers_each_message_on_its_own_connection_in_order() -> None:
    connector = FlakyConnector()
    reports = run_worker(connector, [b"one", b"two", b"three"])
    assert connector.sent == [b"one\n", b"two\n", b"three\n"]
    assert len(connector.attempts) == 3
    assert reports.chunks[0].delivered == 3 and reports.chunks[0].delivered_bytes == 11


def test_worker_retries_with_growing_backoff_while_the_sink_is_down_and_reports_down_then_up() -> None:
    connector = FlakyConnector(failures=3)
    reports = run_worker(connector, [b"late"], Backoff(initial_s=0.02, maximum_s=1.0))
    gaps = [b - a for a, b in zip(connector.attempts, connector.attempts[1:])]
    assert connector.sent == [b"late\n"]
    assert gaps[0] >= 0.015 and gaps[1] >= 0.035 and gaps[2] >= 0.075
    assert reports.events == ["down: Connection refused", "up"]


def test_worker_in_stream_mode_writes_many_lines_over_one_connection() -> None:
    reports = Reports()
    queue = SinkQueue()
    with LineSink() as sink:
        worker = SinkWorker("k", SinkAddress("localhost", sink.port, MODE_STREAM), queue, reports).start()
        try:
            for index in range(50):
                queue.offer(chunk([b"%d" % index, b"%d-b" % index]))
            wait_until(lambda: sink.count() == 100, TIMEOUT_S, message="100 lines at the sink")
        finally:
            worker.stop(1.0)
        assert sink.snapshot()[:4] == [b"0", b"0-b", b"1", b"1-b"]
        assert sink.connections == 1


def test_an_idle_stream_sink_is_written_directly_and_a_busy_one_through_its_queue() -> None:
    reports = Reports()
    queue = SinkQueue()
    with LineSink() as sink:
        worker = SinkWorker("k", SinkAddress("localhost", sink.port, MODE_STREAM), queue, reports).start()
        try:
            queue.offer(chunk([b"first"]), worker.try_direct)  # no connection yet: the worker connects
            wait_until(lambda: reports.chunks, TIMEOUT_S, message="the first chunk through the worker")
            direct = chunk([b"second", b"third"])
            assert queue.offer(direct, worker.try_direct) == 0
            assert direct.delivered == 2 and worker.direct_writes == 1 and not queue.chunks
            assert wait_lines(sink, 3) == [b"first", b"second", b"third"]
        finally:
            worker.stop(1.0)
        assert sink.connections == 1


def test_payloads_older_than_the_age_bound_are_dropped_while_the_sink_is_down() -> None:
    reports = Reports()
    queue = SinkQueue()
    worker = SinkWorker("k", SinkAddress("127.0.0.1", free_port(), MODE_MESSAGE), queue, reports,
                        backoff=Backoff(initial_s=0.01, maximum_s=0.02))
    worker.max_age_s = 0.2
    worker.start()
    try:
        for index in range(5):
            queue.offer(chunk([b"%d" % index, b"x"]))
        wait_until(lambda: sum(c.expired for c in reports.chunks) == 10, TIMEOUT_S, message="every payload expired")
        assert queue.messages == 0 and not queue.chunks
        assert all(c.delivered == 0 for c in reports.chunks)
        assert reports.events[0].startswith("down")
    finally:
        worker.stop(1.0)


# ---- a real router process -------------------------------------------------------------

class FakeGateway:
    """The gateway's side of the data plane: a ROUTER on the data endpoint that sends batches and collects acks."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.acked: dict[str, int] = {}
        self.heartbeats: list[Heartbeat] = []
        self.seq: dict[str, int] = {}

    def pump(self, timeout_s: float = 0.05) -> None:
        while self.sock.poll(int(timeout_s * 1000)):
            _, body = self.sock.recv_multipart()
            message = decode(body)
            if isinstance(message, DataAck):
                self.acked[message.source] = max(self.acked.get(message.source, 0), message.seq)
            elif isinstance(message, Heartbeat):
                self.heartbeats.append(message)
            timeout_s = 0

    def wait_router(self) -> None:
        wait_until(lambda: self.pump() or self.heartbeats, TIMEOUT_S, message="the router's heartbeat on the data socket")

    def send(self, source: str, payloads: list[bytes], router: bytes = b"router-1") -> int:
        """Send one batch; returns its last seq."""
        first = self.seq.get(source, 0) + 1
        self.seq[source] = first + len(payloads) - 1
        self.sock.send_multipart([router, encode(DataBatch(source=source, seq=first, payloads=payloads, received_at=time.time()))])
        return self.seq[source]

    def wait_ack(self, source: str, seq: int, timeout: float = TIMEOUT_S) -> None:
        wait_until(lambda: self.pump() or self.acked.get(source, 0) >= seq, timeout, message=f"ack of {source[:8]} up to {seq}")

    def close(self) -> None:
        self.sock.close()
        self.context.destroy(linger=0)


class Rig:
    """broker + state keeper (via launch.py), one router process, a fake gateway, and helpers to register peripherals."""

    def __init__(self, instance: Instance, tmp_path: Path) -> None:
        self.instance = instance
        self.state = instance.state_client()
        self.gateway = FakeGateway(instance.runtime.endpoints.data)
        log = open(tmp_path / "router.out", "ab")
        self.router = subprocess.Popen([sys.executable, "-m", "actors.router", "--runtime", instance.runtime.to_json(), "--name", "router-1"],
                                       cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.gateway.wait_router()

    def peripheral(self, name: str, port: int, delivery: str = MODE_MESSAGE) -> str:
        uuid = str(uuidlib.uuid4())
        self.state.request(Op.REGISTER, name=name, uuid=uuid, port=port)
        if delivery != MODE_MESSAGE:
            self.state.request(Op.SET_DELIVERY, peripheral=name, mode=delivery)
        return uuid

    def route(self, name: str, incoming: str, outgoing: str) -> None:
        self.state.request(Op.ADD_ROUTE, name=name, incoming=incoming, outgoing=outgoing)

    def wait_routes(self, count: int) -> None:
        """The router's replica has caught up (its heartbeat counts routes)."""
        wait_until(lambda: self.gateway.pump() or (self.gateway.heartbeats and self.gateway.heartbeats[-1].stats["routes"] >= count),
                   TIMEOUT_S, message=f"{count} routes at the router")

    def router_stats(self) -> dict:
        self.gateway.heartbeats.clear()
        wait_until(lambda: self.gateway.pump() or self.gateway.heartbeats, TIMEOUT_S, message="a router heartbeat")
        return self.gateway.heartbeats[-1].stats

    def close(self) -> None:
        self.router.terminate()
        try:
            self.router.wait(5)
        except subprocess.TimeoutExpired:
            self.router.kill()
            self.router.wait()
        self.gateway.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    instance = start_instance(tmp_path, only=["broker", "state"])
    rig = None
    try:
        rig = Rig(instance, tmp_path)
        yield rig
    finally:
        if rig is not None:
            rig.close()
        instance.stop()


def test_one_source_with_three_routes_delivers_three_copies(rig: Rig) -> None:
    with LineSink() as a, LineSink() as b, LineSink() as c:
        source = rig.peripheral("Source", free_port())
        for sink, name in ((a, "A"), (b, "B"), (c, "C")):
            rig.peripheral(name, sink.port)
            rig.route(f"to{name}", "Source", name)
        rig.wait_routes(3)
        last = rig.gateway.send(source, [b"hello", b"world"])
        rig.gateway.wait_ack(source, last)
        for sink in (a, b, c):
            assert wait_lines(sink, 2) == [b"hello", b"world"]


def test_payloads_of_one_source_arrive_in_order(rig: Rig) -> None:
    with LineSink() as sink:
        source = rig.peripheral("Source", free_port())
        rig.peripheral("Sink", sink.port)
        rig.route("r", "Source", "Sink")
        rig.wait_routes(1)
        expected = [b"%d" % i for i in range(300)]
        for start in range(0, 300, 7):
            last = rig.gateway.send(source, expected[start:start + 7])
        rig.gateway.wait_ack(source, last)
        assert wait_lines(sink, 300) == expected


def test_default_mode_opens_a_connection_per_message_and_stream_mode_one(rig: Rig) -> None:
    with LineSink() as legacy, LineSink() as streamer:
        source = rig.peripheral("Source", free_port())
        rig.peripheral("Legacy", legacy.port)
        rig.peripheral("Streamer", streamer.port, delivery=MODE_STREAM)
        rig.route("old", "Source", "Legacy")
        rig.route("new", "Source", "Streamer")
        rig.wait_routes(2)
        for index in range(20):
            last = rig.gateway.send(source, [b"m%d-a" % index, b"m%d-b" % index])
        rig.gateway.wait_ack(source, last)
        assert wait_lines(legacy, 40) == wait_lines(streamer, 40) and len(legacy.snapshot()) == 40
        assert legacy.connections == 40
        assert streamer.connections == 1


def test_a_sink_that_is_down_gets_its_queue_when_it_comes_back(rig: Rig) -> None:
    sink = LineSink().start()
    port = sink.port
    sink.stop()
    try:
        source = rig.peripheral("Source", free_port())
        rig.peripheral("Sink", port)
        rig.route("r", "Source", "Sink")
        rig.wait_routes(1)
        last = rig.gateway.send(source, [b"while", b"down"])
        rig.gateway.wait_ack(source, last)  # parked: queued for the sink, no longer holding the source back
        stats = wait_until(lambda: (figures := rig.router_stats())["parked"] == 1 and figures, TIMEOUT_S,
                           message="the sink parked in a beat")
        assert stats["queued"] == 2 and stats["parked"] == 1
        sink = LineSink(port=port)
        wait_until(lambda: restarted(sink), TIMEOUT_S, message=f"port {port} free again")
        assert wait_lines(sink, 2) == [b"while", b"down"]
    finally:
        sink.stop()


def test_a_sink_down_beyond_the_age_bound_loses_its_old_payloads_counted_and_logged_once(rig: Rig) -> None:
    rig.state.request(Op.SET_CONFIG, values={"router_queue_age_s": 0.3})
    source = rig.peripheral("Source", free_port())
    rig.peripheral("Sink", free_port())  # nothing listens there
    rig.route("r", "Source", "Sink")
    rig.wait_routes(1)
    for _ in range(4):
        last = rig.gateway.send(source, [b"stale", b"reading"])
    rig.gateway.wait_ack(source, last)  # expired payloads are done: acknowledged
    # A beat may leave between the ack and the count; the next one has it.
    stats = wait_until(lambda: (figures := rig.router_stats())["expired"] == 8 and figures, TIMEOUT_S,
                       message="8 expired in a beat")
    assert stats["expired"] == 8 and stats["dropped"] == 8 and stats["delivered"] == 0 and stats["queued"] == 0
    log_text = (rig.instance.config_dir / "logs" / "router-1.log").read_text()
    assert log_text.count("is not keeping up") == 1  # one activity line for the episode, not one per payload


def test_a_slow_sink_does_not_delay_a_fast_one(rig: Rig) -> None:
    with LineSink(delay_s=0.05) as slow, LineSink() as fast:
        source = rig.peripheral("Source", free_port())
        rig.peripheral("Slow", slow.port)
        rig.peripheral("Fast", fast.port)
        rig.route("slow", "Source", "Slow")
        rig.route("fast", "Source", "Fast")
        rig.wait_routes(2)
        started = time.monotonic()
        for index in range(100):
            rig.gateway.send(source, [b"%d" % index])
        wait_until(lambda: fast.count() == 100, TIMEOUT_S, message="all 100 at the fast sink")
        assert time.monotonic() - started < 2.0  # the slow one needs 5 s for the same
        assert slow.count() < 100


def test_a_full_queue_drops_and_counts_instead_of_growing(tmp_path: Path) -> None:
    instance = start_instance(tmp_path, only=["broker", "state"], config={"router_queue_messages": 10})
    rig = None
    try:
        rig = Rig(instance, tmp_path)
        source = rig.peripheral("Source", free_port())
        rig.peripheral("Gone", free_port())
        rig.route("r", "Source", "Gone")
        rig.wait_routes(1)
        last = rig.gateway.send(source, [b"x"] * 25)
        wait_until(lambda: rig.router_stats()["dropped"] == 15, TIMEOUT_S, message="15 drops")
        assert rig.router_stats()["queued"] == 10
        rig.gateway.wait_ack(source, last)  # the sink is down: parked, so it never holds its source back
    finally:
        if rig is not None:
            rig.close()
        instance.stop()


def test_usage_reaches_routes_cf_in_batches_not_per_message(rig: Rig) -> None:
    with LineSink() as sink:
        source = rig.peripheral("Source", free_port())
        rig.peripheral("Sink", sink.port, delivery=MODE_STREAM)
        rig.route("r", "Source", "Sink")
        rig.wait_routes(1)
        writes_before = state_writes(rig)
        for _ in range(100):
            last = rig.gateway.send(source, [b"0123456789"] * 10)
        rig.gateway.wait_ack(source, last)
        routes_cf = rig.instance.config_dir / "routes.cf"

        def recorded() -> dict | None:
            routes = json.loads(routes_cf.read_text())
            return routes[0] if routes and routes[0].get("messages") == 1000 and routes[0]["last_used"] else None
        route = wait_until(recorded, TIMEOUT_S, 0.1, "usage in routes.cf")
        assert route["bytes"] == 10_000 and route["dropped"] == 0
        assert time.time() - route["last_used"] < 30
        assert state_writes(rig) - writes_before <= 5  # 1000 messages, a handful of coalesced writes


def state_writes(rig: Rig) -> int:
    """The state keeper's file-write counter, from its heartbeat on the bus."""
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, Topic.KEEPER_HEARTBEAT.value)  # the keeper beats on its own topic
    sub.connect(rig.instance.runtime.endpoints.events_out)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if sub.poll(500):
                beat = decode_as(sub.recv_multipart()[1], Heartbeat)
                if beat.actor == "state":
                    return beat.stats["writes"]
        raise AssertionError("no heartbeat from the state keeper")
    finally:
        sub.close()
        context.destroy(linger=0)


def test_a_tap_streams_a_routes_payloads_only_while_watched(rig: Rig) -> None:
    with LineSink() as sink:
        source = rig.peripheral("Source", free_port())
        rig.peripheral("Sink", sink.port)
        rig.route("watched", "Source", "Sink")
        rig.wait_routes(1)
        assert rig.router_stats()["taps"] == 0
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, tap_topic("route", "watched"))
        sub.connect(rig.instance.runtime.endpoints.events_out)
        try:
            wait_until(lambda: rig.router_stats()["taps"] == 1, TIMEOUT_S, message="the router to see the tap")
            rig.gateway.send(source, [b"look", b"here"])
            assert sub.poll(int(TIMEOUT_S * 1000))
            topic, body = sub.recv_multipart()
            tap = decode_as(body, Tap)
            assert topic == tap_topic("route", "watched") and tap.payloads == [b"look", b"here"] and tap.source == source
        finally:
            sub.close()
            context.destroy(linger=0)
        wait_until(lambda: rig.router_stats()["taps"] == 0, TIMEOUT_S, message="the tap to end with its watcher")


def test_a_batch_from_a_source_without_routes_is_acknowledged(rig: Rig) -> None:
    source = str(uuidlib.uuid4())
    last = rig.gateway.send(source, [b"nobody listens"])
    rig.gateway.wait_ack(source, last)


def test_route_rules_filter_and_transform_before_delivery(rig: Rig) -> None:
    with LineSink() as sink:
        source = rig.peripheral("Source", free_port())
        rig.peripheral("Sink", sink.port)
        rig.route("r", "Source", "Sink")
        rig.state.request(Op.SET_ROUTE_RULE, name="r", key="filter", rule="re:^keep")
        rig.state.request(Op.SET_ROUTE_RULE, name="r", key="transform", rule="sub:/keep/kept/")
        rig.route("barrier", "Sink", "Source")  # numbered after the rules: once the router has it, it has them
        rig.wait_routes(2)
        last = rig.gateway.send(source, [b"keep 1", b"drop 2", b"keep 3"])
        rig.gateway.wait_ack(source, last)
        assert wait_lines(sink, 2) == [b"kept 1", b"kept 3"]
        wait_until(lambda: rig.router_stats()["filtered"] == 1, TIMEOUT_S, message="one payload filtered")


def test_acks_are_counted_per_source_and_gateway_epoch() -> None:
    book = AckBook()
    old = BatchTracker("s", 50, pending=1, epoch="old-gateway")
    assert book.add(old) is None
    assert book.add(BatchTracker("s", 3, pending=0, epoch="new-gateway")) == 3  # not held behind the old gateway's batch
    assert book.chunk_done(old) == 50
