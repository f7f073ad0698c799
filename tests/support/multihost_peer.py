"""Fake peripherals of another board, for tests/system/test_multihost.py and bench/multihost_bench.py.

Run inside a network namespace, from the repository root
(``ip netns exec B python -m tests.support.multihost_peer ...``):

    peers ORCH_HOST ORCH_PORT --bind ADDR --sink-port P --sources N --status FILE [--rate HZ] [--duration S]
        a sink on ADDR:P (named mh_sink) and N sources (mh_src_<i>), all registered with the orchestrator
        (which records ADDR as their host); each source streams "<i> <seq>" lines on its data port;
        FILE gets the sink's counts (JSON) every STATUS_INTERVAL_S until --duration or SIGTERM.
        Routes are the operator's job (admin commands): add them with `cmd` from the main board.
    cmd ORCH_HOST ORCH_PORT LINE...
        send each command line on a connection of its own, print the replies.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

from tests.support.fakes import register
from tests.support.instances import send_line

CONNECT_TIMEOUT_S = 5.0
STATUS_INTERVAL_S = 0.2
ACCEPT_POLL_S = 0.1
RECONNECT_PAUSE_S = 0.2
SINK_NAME = "mh_sink"


def register_for_data_port(host: str, port: int, name: str, uuid: str, own_port: int) -> int:
    """Register like a real peripheral (one recv for the ack); returns the data port."""
    word, _, data_port = register(port, name, uuid, own_port, host, CONNECT_TIMEOUT_S).strip().partition(" ")
    if word != "/ack" or not data_port.isdigit():
        raise RuntimeError(f"unexpected answer to /register {name}: {word} {data_port}")
    return int(data_port)


class Sink:
    """Accepts any number of connections; counts "<index> <seq>" lines per source and order breaks."""

    def __init__(self, bind: str, port: int) -> None:
        self.listener = socket.create_server((bind, port), reuse_port=False, backlog=512)
        self.listener.settimeout(ACCEPT_POLL_S)
        self.lock = threading.Lock()
        self.received: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.out_of_order = 0
        self.stopping = threading.Event()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            while data := conn.recv(65536):
                pending += data
                *lines, pending = pending.split(b"\n")
                self._count(lines)

    def _count(self, lines: list[bytes]) -> None:
        with self.lock:
            for line in lines:
                index, _, seq_text = line.decode("utf-8", "replace").partition(" ")
                if not seq_text.isdigit():
                    continue
                seq = int(seq_text)
                self.received[index] = self.received.get(index, 0) + 1
                if seq <= self.last.get(index, 0):
                    self.out_of_order += 1
                self.last[index] = max(seq, self.last.get(index, 0))

    def figures(self) -> dict:
        with self.lock:
            return {"received": dict(self.received), "last": dict(self.last), "out_of_order": self.out_of_order,
                    "total": sum(self.received.values())}


class Source:
    """Streams numbered lines on its data port, reconnecting when the orchestrator closes on it."""

    def __init__(self, index: int, uuid: str, host: str, data_port: int) -> None:
        self.index, self.uuid, self.host, self.data_port = index, uuid, host, data_port
        self.sock: socket.socket | None = None
        self.seq = 0

    def send(self, count: int) -> None:
        lines = []
        for _ in range(count):
            self.seq += 1
            lines.append(f"{self.index} {self.seq}\n")
        try:
            if self.sock is None:
                self.sock = socket.create_connection((self.host, self.data_port), timeout=CONNECT_TIMEOUT_S)
                self.sock.sendall(f"{self.uuid}\n".encode())
            self.sock.sendall("".join(lines).encode())
        except OSError:
            if self.sock is not None:
                self.sock.close()
            self.sock = None
            time.sleep(RECONNECT_PAUSE_S)


def write_status(path: Path, figures: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures))
    os.replace(tmp, path)


def run_peers(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sink = Sink(args.bind, args.sink_port)
    threading.Thread(target=sink.serve, daemon=True).start()
    sink_uuid = str(uuidlib.uuid4())
    register_for_data_port(args.orch_host, args.orch_port, SINK_NAME, sink_uuid, args.sink_port)
    sources = []
    for index in range(args.sources):
        uuid, name = str(uuidlib.uuid4()), f"mh_src_{index}"
        data_port = register_for_data_port(args.orch_host, args.orch_port, name, uuid, args.sink_port)
        sources.append(Source(index, uuid, args.orch_host, data_port))
    status = Path(args.status)
    threading.Thread(target=report, args=(status, sink, sources, stop), daemon=True).start()
    while args.start_file and not Path(args.start_file).exists() and not stop.is_set():
        stop.wait(STATUS_INTERVAL_S)  # registered; the routes come next
    deadline = time.monotonic() + args.duration
    period = 1.0 / args.rate if args.rate > 0 else 0.0  # 0: as fast as the orchestrator takes it
    next_send = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        for source in sources:
            source.send(args.burst)
        if period:
            next_send = max(next_send + period, time.monotonic() - period)
            stop.wait(max(0.0, next_send - time.monotonic()))
    stop.set()
    sink.stopping.set()
    sent = {str(s.index): s.seq for s in sources}
    write_status(status, {**sink.figures(), "sent": sent, "ready": True, "done": True})
    return 0


def report(path: Path, sink: Sink, sources: list[Source], stop: threading.Event) -> None:
    """Write the sink's figures every STATUS_INTERVAL_S (a thread: a source blocked by backpressure does not stall
    it)."""
    while not stop.is_set():
        sent = {str(s.index): s.seq for s in sources}
        write_status(path, {**sink.figures(), "sent": sent, "ready": True, "at": time.monotonic()})
        stop.wait(STATUS_INTERVAL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    peers = sub.add_parser("peers")
    peers.add_argument("orch_host")
    peers.add_argument("orch_port", type=int)
    peers.add_argument("--bind", required=True)
    peers.add_argument("--sink-port", type=int, required=True)
    peers.add_argument("--sources", type=int, default=8)
    peers.add_argument("--status", required=True)
    peers.add_argument("--rate", type=float, default=50.0, help="sends per second per source (0: unpaced)")
    peers.add_argument("--burst", type=int, default=1, help="lines per send")
    peers.add_argument("--duration", type=float, default=60.0)
    peers.add_argument("--start-file", default=None, help="send nothing until this file exists")
    cmd = sub.add_parser("cmd")
    cmd.add_argument("orch_host")
    cmd.add_argument("orch_port", type=int)
    cmd.add_argument("line", nargs="+", help="each line is sent on a connection of its own")
    args = parser.parse_args(argv)
    if args.mode == "cmd":
        for line in args.line:
            print(send_line(args.orch_port, line, CONNECT_TIMEOUT_S, args.orch_host))
        return 0
    return run_peers(args)


if __name__ == "__main__":
    sys.exit(main())
