"""Latency: a lone per-message payload never waits for the sink worker thread's turn; tracing costs nothing unwatched."""
from __future__ import annotations

import socket

from actors.router.sinks import MODE_MESSAGE, Chunk, SinkAddress, SinkQueue, SinkWorker, framed_size
from tests.support.instances import free_port, wait_until
from tests.support.fakes import LineSink

TIMEOUT_S = 5.0


def lone(payload: bytes) -> Chunk:
    return Chunk("r", [payload], framed_size([payload]))


def never_started(address: SinkAddress) -> tuple[SinkWorker, SinkQueue]:
    """A worker whose thread never runs: whatever reaches the sink went out from the caller's thread."""
    queue = SinkQueue()
    return SinkWorker("k", address, queue, lambda *_: None), queue


def test_a_lone_message_is_written_from_the_router_thread_on_its_own_connection() -> None:
    with LineSink() as sink:
        worker, queue = never_started(SinkAddress("127.0.0.1", sink.port, MODE_MESSAGE))
        first, second = lone(b"one"), lone(b"two")
        assert queue.offer(first, worker.try_direct) == 0 and queue.offer(second, worker.try_direct) == 0
        assert first.delivered == 1 and second.delivered == 1 and not queue.chunks and queue.messages == 0
        assert worker.direct_writes == 2 and worker.connections == 2
        wait_until(lambda: sink.count() == 2, TIMEOUT_S, message="both lines at the sink")
        assert sink.snapshot() == [b"one", b"two"]
        assert sink.connections == 2


def test_a_refused_lone_message_is_left_to_the_worker_with_nothing_sent() -> None:
    worker, queue = never_started(SinkAddress("127.0.0.1", free_port(), MODE_MESSAGE))
    refused = lone(b"late")
    assert queue.offer(refused, worker.try_direct) == 0
    assert refused.delivered == 0 and list(queue.chunks) == [refused] and worker.direct_writes == 0


def test_only_one_message_at_a_time_and_only_when_the_worker_is_idle() -> None:
    with LineSink() as sink:
        worker, queue = never_started(SinkAddress("127.0.0.1", sink.port, MODE_MESSAGE))
        pair = Chunk("r", [b"a", b"b"], framed_size([b"a", b"b"]))
        assert queue.offer(pair, worker.try_direct) == 0 and list(queue.chunks) == [pair]  # a batch: the worker's job
        behind = lone(b"c")
        queue.offer(behind, worker.try_direct)
        assert list(queue.chunks) == [pair, behind] and behind.delivered == 0  # never overtakes what waits
        assert worker.direct_writes == 0


def test_a_sink_known_by_name_is_not_looked_up_from_the_router_thread() -> None:
    """A name may need DNS (it may block): until the worker resolved it, the worker delivers."""
    worker, queue = never_started(SinkAddress("sink.invalid", 7, MODE_MESSAGE))
    chunk = lone(b"x")
    assert queue.offer(chunk, worker.try_direct) == 0 and list(queue.chunks) == [chunk]


def test_a_lone_message_to_a_non_loopback_sink_goes_through_the_worker() -> None:
    """Off loopback a connect does not complete inside connect(): the router thread must not wait on it."""
    worker, queue = never_started(SinkAddress("192.0.2.1", 7, MODE_MESSAGE))  # TEST-NET-1: never contacted
    chunk = lone(b"x")
    assert queue.offer(chunk, worker.try_direct) == 0 and list(queue.chunks) == [chunk]


def test_a_watched_trace_follows_a_payload_through_every_stage_in_order(orchestrator) -> None:
    """Subscribing to Topic.TRACE turns sampling on; each trace holds the payload's head and five rising stage times."""
    import uuid as uuidlib

    import zmq

    from actors.core.protocol import Topic, Trace, decode_as

    sub = orchestrator.context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, Topic.TRACE.value)
    sub.connect(orchestrator.runtime.endpoints.events_out)
    with LineSink() as sink:
        source = str(uuidlib.uuid4())
        port = int(orchestrator.command(f"/register Trace_Source {source} 1").split()[1])
        orchestrator.command(f"/register Trace_Sink {uuidlib.uuid4()} {sink.port}")
        orchestrator.command("/routes add traced Trace_Source Trace_Sink")
        traces: list = []

        def traced() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as conn:
                conn.sendall(f"{source}\nhello trace\n".encode())
            while sub.poll(100):
                traces.append(decode_as(sub.recv_multipart()[1], Trace).stages)
            return bool(traces)
        wait_until(traced, TIMEOUT_S * 2, 0.2, "a trace (the subscription reaches the router, the route the gateway)")
    sub.close()
    head, *stamps = traces[0]
    assert head == b"hello trace" and len(stamps) == 4
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] < TIMEOUT_S
