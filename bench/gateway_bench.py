"""How fast the command gateway ingests /data lines, and how quickly it answers /help meanwhile.

Not a test. Starts a real instance (broker, state keeper, gateway) in a temporary folder on
ephemeral loopback ports, registers a source and a sink peripheral, adds a route, and puts an
acking fake router on the data plane (so the figures are the gateway's, not a sink's). Then:

* one persistent connection writing N ``/data <uuid> <payload>`` lines;
* one connection per message (connect, one line, close without reading), C clients at a time;

each timed from the first byte sent until the fake router has every payload. While each load
runs, a prober sends ``/help`` on a fresh connection every PROBE_INTERVAL_S and records the reply
latency (median, p99); an idle baseline is measured first.

The machine's core count is printed: clients, the fake router and the gateway share those cores.

Run: python -m bench.gateway_bench [--lines 200000] [--messages 5000] [--clients 32] [--processes 2]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq


from actors.core.protocol import DataAck, DataBatch, Heartbeat, decode_as, encode
from tests.support.instances import Instance, start_instance
from tests.support.fakes import RegisteringPeripheral

HOST = "127.0.0.1"
PAYLOAD = '{"text": "the quick brown fox jumps over the lazy dog", "n": %d}'
PROBE_INTERVAL_S = 0.02
IDLE_PROBES = 100
ROUTER_POLL_MS = 100
WRITE_CHUNK_LINES = 2000
LOAD_TIMEOUT_S = 300.0


class AckingRouter(threading.Thread):
    """A fake router: heartbeats, counts payloads, acks every batch at once."""

    def __init__(self, endpoint: str, name: str = "router-bench") -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.name = name
        self.received = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.name.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.endpoint)
        next_beat = 0.0
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_beat:
                    sock.send(encode(Heartbeat(actor=self.name, pid=0, host="bench", started_at=time.time())))
                    next_beat = time.monotonic() + 0.5
                if sock.poll(ROUTER_POLL_MS):
                    self._drain(sock)
        finally:
            sock.close()
            context.term()

    def _drain(self, sock: zmq.Socket) -> None:
        while True:
            try:
                body = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            batch = decode_as(body, DataBatch)
            sock.send(encode(DataAck(source=batch.source, seq=batch.seq + len(batch.payloads) - 1)))
            with self.lock:
                self.received += len(batch.payloads)

    def count(self) -> int:
        with self.lock:
            return self.received


class HelpProber(threading.Thread):
    """Sends /help on a fresh connection every PROBE_INTERVAL_S; records round-trip times in ms."""

    def __init__(self, port: int, limit: int | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.limit = limit
        self.latencies_ms: list[float] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and (self.limit is None or len(self.latencies_ms) < self.limit):
            started = time.perf_counter()
            try:
                with socket.create_connection((HOST, self.port), timeout=10) as sock:
                    sock.sendall(b"/help\n")
                    sock.shutdown(socket.SHUT_WR)
                    reply = b""
                    while chunk := sock.recv(65536):
                        reply += chunk
                if reply.startswith(b"Available commands:"):
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            time.sleep(PROBE_INTERVAL_S)

    def summary(self) -> str:
        if not self.latencies_ms:
            return f"no replies ({self.failures} failures)"
        ordered = sorted(self.latencies_ms)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (f"median {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms, max {ordered[-1]:.2f} ms "
                f"({len(ordered)} probes, {self.failures} failures)")


def wait_for(router: AckingRouter, target: int, timeout: float = LOAD_TIMEOUT_S) -> float:
    """Seconds until the router has counted target payloads."""
    deadline = time.monotonic() + timeout
    while router.count() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"router got {router.count()} of {target} payloads within {timeout}s")
        time.sleep(0.002)
    return time.monotonic()


def persistent(port: int, uuid: str, count: int) -> None:
    """One connection, count /data lines, written in big chunks."""
    with socket.create_connection((HOST, port)) as sock:
        for start in range(0, count, WRITE_CHUNK_LINES):
            lines = "".join(f"/data {uuid} {PAYLOAD % i}\n" for i in range(start, min(count, start + WRITE_CHUNK_LINES)))
            sock.sendall(lines.encode())
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


async def per_message(port: int, uuid: str, count: int, clients: int) -> None:
    """count connections, each one /data line then close without reading; clients at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            _, writer = await asyncio.open_connection(HOST, port)
            writer.write(f"/data {uuid} {PAYLOAD % i}\n".encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(client() for _ in range(clients)))


def per_message_run(args: tuple[int, str, int, int]) -> None:
    asyncio.run(per_message(*args))


def per_message_processes(pool: "multiprocessing.pool.Pool", port: int, uuid: str, count: int, clients: int, processes: int) -> None:
    """Split the one-per-message load over client processes (one Python client cannot saturate the gateway)."""
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    pool.map(per_message_run, [(port, uuid, share, max(1, clients // processes)) for share in shares])


def measure(label: str, instance: Instance, router: AckingRouter, load: "callable[[], None]", count: int) -> None:
    prober = HelpProber(instance.command_port)
    before = router.count()
    prober.start()
    started = time.monotonic()
    load()
    finished = wait_for(router, before + count)
    prober.stopping.set()
    prober.join(timeout=15)
    seconds = finished - started
    print(f"{label}: {count} lines in {seconds:.2f} s = {count / seconds:,.0f} lines/s")
    print(f"    /help under this load: {prober.summary()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200_000, help="lines on the persistent connection")
    parser.add_argument("--messages", type=int, default=5_000, help="connections in the one-per-message run")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the one-per-message run")
    parser.add_argument("--processes", type=int, default=2, help="client processes for the one-per-message run")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPU cores; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        instance = start_instance(Path(tmp), only=["broker", "state", "gateway"], config={"max_connections": 4096})
        router = AckingRouter(instance.runtime.endpoints.data)
        source = RegisteringPeripheral(instance.command_port, "BenchSource")
        sink = RegisteringPeripheral(instance.command_port, "BenchSink")
        try:
            router.start()
            source.register()
            sink.register()
            print(instance.command("/routes add bench BenchSource BenchSink").strip())
            idle = HelpProber(instance.command_port, IDLE_PROBES)
            idle.run()
            print(f"/help idle: {idle.summary()}")
            measure("persistent connection", instance, router, lambda: persistent(instance.command_port, source.uuid, args.lines), args.lines)
            with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
                pool.map(abs, range(args.processes))  # start the workers before the clock does
                measure(f"one connection per message ({args.clients} clients at a time in {args.processes} processes)", instance, router,
                        lambda: per_message_processes(pool, instance.command_port, source.uuid, args.messages, args.clients, args.processes),
                        args.messages)
            print(instance.command("/status"))
        finally:
            router.stopping.set()
            router.join(timeout=5)
            source.stop()
            sink.stop()
            instance.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
