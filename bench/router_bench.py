"""Routing benchmark: a bare asyncio relay next to the orchestrator, same load, same run, one command.

    python -m bench.router_bench [--messages N] [--message-mode-messages N] [--rate R] [--seconds S]

Scenarios, each with 4 sources -> 4 sinks (one route per source), unpaced (throughput) and
paced at --rate messages/s in total (latency):
  (a) relay       a minimal single-process asyncio relay written here (the network limit)
      relay/msg   the same relay opening one new connection per payload, sequential per sink
                  (so ordered): the physical reference for per-message delivery
  (b) stream x1   the orchestrator (launch.py --headless), sinks in stream mode, 1 router
      stream x2   the same with 2 routers
  (c) message x2  the orchestrator in the default mode: one TCP connection per message
Sources and sinks run in two helper processes (this script with --role); a payload is
"<source> <seq> <monotonic_ns>" padded to PAYLOAD_BYTES, so each sink counts loss, order
violations and latency. RSS is the sum over the supervisor and all of its children.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

SOURCES = 4
PAYLOAD_BYTES = 64
UNPACED_BURST = 100  # lines per write from an unpaced source
SETTLE_S = 1.5  # no new line for this long: the run is over
RUN_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 30.0
LOWEST_PORT = 20000


# ---- helper process: sinks ----------------------------------------------------------------

class BenchSink:
    """One sink's counts: order per source, latency per line, connections (per-message or stream)."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.out_of_order = 0
        self.last_seq: dict[bytes, int] = {}
        self.latencies: list[int] = []
        self.connections = 0
        self.last_at = 0

    def lines(self, lines: list[bytes], now: int) -> None:
        for line in lines:
            source, seq, sent = line.split(b" ", 3)[:3]
            seq_n = int(seq)
            previous = self.last_seq.get(source, 0)
            if seq_n <= previous:
                self.out_of_order += 1
            else:
                self.last_seq[source] = seq_n
            self.latencies.append(now - int(sent))
        self.received += len(lines)
        self.last_at = now

    def report(self) -> dict[str, Any]:
        return {"received": self.received, "out_of_order": self.out_of_order, "latencies": self.latencies,
                "connections": self.connections, "last_at": self.last_at}


class SinkServer:
    """Every sink in one thread over one selector: no GIL hand-off between sink threads inflates the latencies we measure."""

    def __init__(self, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.sinks = []
        for _ in range(count):
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            listener.setblocking(False)
            sink = BenchSink(listener)
            self.sinks.append(sink)
            self.selector.register(listener, selectors.EVENT_READ, (sink, None))
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                sink, pending = key.data
                with self.lock:
                    if pending is None:
                        self._accept(key.fileobj, sink)
                    else:
                        self._read(key.fileobj, sink, pending)

    def _accept(self, listener: socket.socket, sink: BenchSink) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            sink.connections += 1
            self.selector.register(conn, selectors.EVENT_READ, (sink, [b""]))

    def _read(self, conn: socket.socket, sink: BenchSink, pending: list[bytes]) -> None:
        try:
            data = conn.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(conn)
            conn.close()
            return
        *lines, pending[0] = (pending[0] + data).split(b"\n")
        if lines:
            sink.lines(lines, time.monotonic_ns())


def role_sinks() -> None:
    """Print the sink ports, then answer 'count' / 'reset' / 'report' lines on stdin with JSON."""
    server = SinkServer(SOURCES)
    sinks = server.sinks
    print(json.dumps([s.port for s in sinks]), flush=True)
    for command in sys.stdin:
        if command.strip() == "count":  # cheap, asked while a run is on
            print(json.dumps({"received": sum(s.received for s in sinks)}), flush=True)
        elif command.strip() == "reset":
            with server.lock:
                for sink in sinks:
                    sink.reset()
            print("{}", flush=True)
        elif command.strip() == "report":
            with server.lock:
                reports = [s.report() for s in sinks]
                latencies = sorted(l for r in reports for l in r["latencies"])
            print(json.dumps({"received": sum(r["received"] for r in reports), "out_of_order": sum(r["out_of_order"] for r in reports),
                              "connections": sum(r["connections"] for r in reports), "last_at": max(r["last_at"] for r in reports),
                              "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99)}), flush=True)


def percentile(sorted_ns: list[int], fraction: float) -> float | None:
    if not sorted_ns:
        return None
    return round(sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * fraction))] / 1e6, 3)


# ---- helper process: sources --------------------------------------------------------------

def payload(source: int, seq: int) -> bytes:
    head = b"%d %d %d " % (source, seq, time.monotonic_ns())
    return head + b"x" * max(0, PAYLOAD_BYTES - len(head))


def role_sources(targets: list[list[Any]], count: int, rate: float) -> None:
    """Connect each source to its data port (uuid line first, docs/protocol.md §3), send count lines each, print the start time."""
    conns = []
    for port, uuid in targets:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(uuid.encode() + b"\n")
        conns.append(conn)
    started = time.monotonic_ns()
    if rate <= 0:
        for first in range(1, count + 1, UNPACED_BURST):
            for index, conn in enumerate(conns):
                last = min(count, first + UNPACED_BURST - 1)
                conn.sendall(b"".join(payload(index, seq) + b"\n" for seq in range(first, last + 1)))
    else:
        interval = 1.0 / rate  # rate is the total over all sources
        next_at = time.monotonic()
        for seq in range(1, count + 1):
            for index, conn in enumerate(conns):
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                conn.sendall(payload(index, seq) + b"\n")
    time.sleep(0.2)
    for conn in conns:
        conn.close()
    print(json.dumps({"started_at": started}), flush=True)


# ---- (a) the relay ------------------------------------------------------------------------

async def relay_main(routes: dict[str, int], per_message: bool = False) -> None:
    """Read a source's uuid line, open one stream to its sink, forward whole lines as they come
    (per_message: one new connection per line instead, one after the other)."""
    async def handle_per_message(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        while line := await reader.readline():
            _, sink = await asyncio.open_connection("127.0.0.1", port)
            sink.write(line)
            await sink.drain()
            sink.close()
            await sink.wait_closed()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uuid = (await reader.readline()).strip().decode()
        if per_message:
            await handle_per_message(reader, writer, routes[uuid])
            return
        _, sink = await asyncio.open_connection("127.0.0.1", routes[uuid])
        pending = b""
        while data := await reader.read(1 << 16):
            pending += data
            cut = pending.rfind(b"\n") + 1
            if cut:
                sink.write(pending[:cut])
                pending = pending[cut:]
                await sink.drain()
        sink.close()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(json.dumps(server.sockets[0].getsockname()[1]), flush=True)
    async with server:
        await server.serve_forever()


def role_relay(routes: dict[str, int], per_message: bool = False) -> None:
    asyncio.run(relay_main(routes, per_message))


# ---- the runner ---------------------------------------------------------------------------

class Helper:
    """A helper process of this script that talks JSON lines."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.router_bench", *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)

    def read(self) -> Any:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"helper {self.process.args[3:5]} exited")
        return json.loads(line)

    def ask(self, command: str) -> Any:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def run_load(sinks: Helper, targets: list[list[Any]], count: int, rate: float) -> dict[str, Any]:
    """One run: reset the sinks, send, wait until the sinks settle, return the numbers."""
    sinks.ask("reset")
    sources = Helper("--role", "sources", "--targets", json.dumps(targets), "--count", str(count), "--rate", str(rate))
    expected = count * len(targets)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        started = sources.read()["started_at"]
        last_count, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            received = sinks.ask("count")["received"]
            if received != last_count:
                last_count, stable_since = received, time.monotonic()
            elif received >= expected or time.monotonic() - stable_since > SETTLE_S:
                break
            time.sleep(0.2)
    finally:
        sources.stop()
    report = sinks.ask("report")
    elapsed_s = max((report["last_at"] - started) / 1e9, 1e-9)
    return {"delivered": report["received"], "lost": expected - report["received"], "out_of_order": report["out_of_order"],
            "msgs_per_s": round(report["received"] / elapsed_s), "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
            "connections": report["connections"]}


def free_port_block(count: int) -> int:
    """count consecutive free loopback ports above LOWEST_PORT."""
    import random
    for _ in range(200):
        base = random.randrange(LOWEST_PORT, 60000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block")


def command(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (threads included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Orchestrator:
    """launch.py --headless in a temporary config folder on ephemeral ports."""

    def __init__(self, routers: int) -> None:
        from actors.core.settings import Runtime
        self.dir = Path(tempfile.mkdtemp(prefix="router-bench-"))
        config_dir = self.dir / "config"
        config_dir.mkdir()
        base = free_port_block(SOURCES + 2)
        self.command_port = base
        config = {"known_ports": str(base), "scan_interval": 60, "command_port": base, "data_port_range": f"{base + 1}-{base + SOURCES + 1}",
                  "peripherals": [], "known_hosts": ["127.0.0.1"], "bind_host": "127.0.0.1"}
        (config_dir / "orch.cf").write_text(json.dumps(config))
        self.runtime = Runtime.for_config_dir(config_dir)
        self.log = open(self.dir / "launch.out", "wb")
        self.process = subprocess.Popen([sys.executable, str(REPO_ROOT / "launch.py"), "--headless", "--config-dir", str(config_dir),
                                         "--routers", str(routers), "--only", "broker,state,gateway,router"],
                                        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def status(self) -> dict[str, Any]:
        import zmq
        from actors.core.protocol import Op
        from actors.core.requests import RequestClient
        context = zmq.Context()
        client = RequestClient(context, self.runtime.endpoints.control)
        try:
            return client.request(Op.CONTROL_STATUS, timeout=2.0)
        finally:
            client.close()
            context.destroy(linger=0)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"launch.py exited; see {self.dir}/launch.out")
            try:
                if self.status()["ready"]:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        raise RuntimeError("orchestrator not ready in time")

    def pids(self) -> list[int]:
        return [self.process.pid] + [c["pid"] for c in self.status()["children"] if c.get("pid")]

    def wire(self, sink_ports: list[int], delivery: str) -> list[list[Any]]:
        """Register 4 sources and 4 sinks, one route each; returns [data_port, uuid] per source."""
        targets = []
        for index, sink_port in enumerate(sink_ports):
            source_uuid = str(uuidlib.uuid4())
            ack = command(self.command_port, f"/register Source{index} {source_uuid} {free_port_block(1)}")
            targets.append([int(ack.split()[1]), source_uuid])
            command(self.command_port, f"/register Sink{index} {uuidlib.uuid4()} {sink_port}")
            if delivery == "stream":
                command(self.command_port, f"/delivery Sink{index} stream")
            command(self.command_port, f"/routes add route{index} Source{index} Sink{index}")
        time.sleep(1.5)  # routers and gateway pick the routes up from the bus
        return targets

    def stop(self) -> None:
        pids = self.pids() if self.process.poll() is None else []
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for pid in pids[1:]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_relay(sinks: Helper, sink_ports: list[int], count: int, rate: float, paced_count: int, role: str = "relay") -> dict[str, Any]:
    uuids = [str(uuidlib.uuid4()) for _ in sink_ports]
    relay = Helper("--role", role, "--routes", json.dumps(dict(zip(uuids, sink_ports))))
    try:
        port = relay.read()
        targets = [[port, uuid] for uuid in uuids]
        return {"unpaced": run_load(sinks, targets, count, 0), "paced": run_load(sinks, targets, paced_count, rate),
                "rss_idle_mb": None, "rss_mb": round(rss_kb([relay.process.pid]) / 1024, 1)}
    finally:
        relay.stop()


def run_orchestrator(sinks: Helper, sink_ports: list[int], routers: int, delivery: str, count: int, rate: float, paced_count: int) -> dict[str, Any]:
    orch = Orchestrator(routers)
    try:
        pids = orch.pids()
        idle = rss_kb(pids)
        targets = orch.wire(sink_ports, delivery)
        cpu_before = cpu_s(pids)
        unpaced = run_load(sinks, targets, count, 0)
        unpaced["cpu_us_per_msg"] = round((cpu_s(pids) - cpu_before) / max(unpaced["delivered"], 1) * 1e6, 1)
        paced = run_load(sinks, targets, paced_count, rate)
        return {"unpaced": unpaced, "paced": paced, "rss_idle_mb": round(idle / 1024, 1), "rss_mb": round(rss_kb(orch.pids()) / 1024, 1)}
    finally:
        orch.stop()


def print_table(results: list[tuple[str, dict[str, Any]]]) -> None:
    base = results[0][1]["unpaced"]["msgs_per_s"] or 1
    base_p99 = results[0][1]["paced"]["p99_ms"] or 1
    header = f"{'scenario':<14} {'delivered':>9} {'lost':>6} {'order':>5} {'msgs/s':>9} {'x relay':>7} {'conns':>7} {'CPU us/msg':>10} | {'paced p50':>9} {'p99 ms':>7} {'x relay':>7} {'lost':>5} {'order':>5} | {'RSS idle':>8} {'RSS MB':>7}"
    print(header)
    print("-" * len(header))
    for name, r in results:
        u, p = r["unpaced"], r["paced"]
        print(f"{name:<14} {u['delivered']:>9} {u['lost']:>6} {u['out_of_order']:>5} {u['msgs_per_s']:>9} {u['msgs_per_s'] / base:>7.2f} {u['connections']:>7} {u.get('cpu_us_per_msg', '-')!s:>10} | "
              f"{p['p50_ms']!s:>9} {p['p99_ms']!s:>7} {(p['p99_ms'] or 0) / base_p99:>7.2f} {p['lost']:>5} {p['out_of_order']:>5} | "
              f"{r['rss_idle_mb']!s:>8} {r['rss_mb']!s:>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("sinks", "sources", "relay", "relay-message"), help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    parser.add_argument("--routes", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=25_000, help="unpaced messages per source (stream and relay)")
    parser.add_argument("--message-mode-messages", type=int, default=5_000, help="unpaced messages per source in per-message mode")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced total messages/s")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each paced run")
    parser.add_argument("--only", default="relay,relaymsg,stream1,stream2,message", help="scenarios to run")
    args = parser.parse_args(argv)
    if args.role == "sinks":
        role_sinks()
        return 0
    if args.role == "sources":
        role_sources(json.loads(args.targets), args.count, args.rate)
        return 0
    if args.role in ("relay", "relay-message"):
        role_relay(json.loads(args.routes), per_message=args.role == "relay-message")
        return 0
    paced_count = int(args.rate / SOURCES * args.seconds)
    wanted = args.only.split(",")
    print(f"router benchmark: {SOURCES} sources -> {SOURCES} sinks, {PAYLOAD_BYTES}-byte payloads, {os.cpu_count()} cores; "
          f"unpaced {args.messages}/source ({args.message_mode_messages} in per-message mode), paced {args.rate:.0f} msg/s for {args.seconds:.0f} s", flush=True)
    sinks = Helper("--role", "sinks")
    results: list[tuple[str, dict[str, Any]]] = []
    try:
        ports = sinks.read()
        scenarios = [("relay", "(a) relay", lambda: run_relay(sinks, ports, args.messages, args.rate, paced_count)),
                     ("relaymsg", "(a) relay/msg", lambda: run_relay(sinks, ports, args.message_mode_messages, args.rate, paced_count,
                                                                    "relay-message")),
                     ("stream1", "(b) stream x1", lambda: run_orchestrator(sinks, ports, 1, "stream", args.messages, args.rate, paced_count)),
                     ("stream2", "(b) stream x2", lambda: run_orchestrator(sinks, ports, 2, "stream", args.messages, args.rate, paced_count)),
                     ("message", "(c) message x2", lambda: run_orchestrator(sinks, ports, 2, "message", args.message_mode_messages, args.rate, paced_count))]
        for key, name, run in scenarios:
            if key in wanted:
                print(f"running {name} ...", flush=True)
                results.append((name, run()))
                print(f"  {json.dumps(results[-1][1])}", flush=True)
    finally:
        sinks.stop()
    print()
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
