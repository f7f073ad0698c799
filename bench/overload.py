"""Overload: sources offer ~10x what slow sinks take, for a minute; every process's memory must stay flat.

    python -m bench.overload [--seconds 60] [--sink-rate 500] [--factor 10] [--sources 2] [--payload-bytes 500]
                             [--mixed]

Each source streams '<name> <seq>' lines on its data port, paced at factor x sink-rate; each sink
(one per source, stream delivery; --mixed alternates message and stream) reads at most sink-rate lines/s. The
gateway must push back (stop reading the sources) instead of buffering without bound or dropping.
Every second it samples VmRSS of the supervisor and each child; at the end it prints the maximum
per process, whether it stayed flat after warm-up, and offered / accepted / delivered / lost.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from pathlib import Path


from tests.support.instances import Instance, send_line, start_instance
from bench.faults import stop_load
from tests.support.fakes import LineSink

WARMUP_S = 10.0
FLAT_TOLERANCE = 0.10  # growth after warm-up beyond 10% ...
FLAT_SLACK_KB = 4096  # ... and beyond 4 MB counts as unbounded
DRAIN_STALL_S = 10.0  # after the load, wait for what was accepted until nothing arrives for this long
SEND_CHUNK_LINES = 50
SOURCE_SNDBUF_BYTES = 64 * 1024


def slow_sink(rate: float) -> LineSink:
    """A sink peripheral that takes at most rate lines/s over all its connections (so the routers fall behind)."""
    return LineSink(delay_s=1.0 / rate if rate else 0.0, multiplexed=True).start()


def unique_seqs(sink: LineSink) -> int:
    """Unique seqs the sink got ('<name> <seq>' lines)."""
    return len({line.rpartition(b" ")[2] for line in sink.snapshot() if line.rpartition(b" ")[2].isdigit()})


class Source:
    """Streams '<name> <seq>' lines on one data port connection, paced at rate; blocks when the gateway pushes back."""

    def __init__(self, name: str, uuid: str, port: int, rate: float, payload_bytes: int) -> None:
        self.name, self.uuid, self.port, self.rate = name, uuid, port, rate
        self.prefix = f"{name} {'x' * max(payload_bytes - len(name) - 10, 0)} "  # '<name> <padding> <seq>'
        self.accepted = 0  # lines the gateway's socket took
        self.stopping = False

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as conn:
            conn.settimeout(None)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOURCE_SNDBUF_BYTES)
            conn.sendall(f"{self.uuid}\n".encode())
            started = time.monotonic()
            while not self.stopping:
                lines = "".join(f"{self.prefix}{self.accepted + i + 1}\n" for i in range(SEND_CHUNK_LINES))
                conn.sendall(lines.encode())
                self.accepted += SEND_CHUNK_LINES
                ahead = self.accepted / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def processes(instance: Instance) -> dict[str, int]:
    found = {"supervisor": instance.process.pid}
    for child in instance.status()["children"]:
        if child["pid"]:
            found[child["name"]] = child["pid"]
    return found


def setup(instance: Instance, count: int, sink_rate: float, source_rate: float, stream: bool,
          payload_bytes: int) -> tuple[list[Source], list[LineSink]]:
    sources, sinks = [], []
    for index in range(count):
        sink = slow_sink(sink_rate)
        send_line(instance.command_port, f"/register Sink{index} {uuidlib.uuid4()} {sink.port}")
        source_uuid = str(uuidlib.uuid4())
        port = int(send_line(instance.command_port, f"/register Source{index} {source_uuid} 1").split()[1])
        if stream or index % 2:
            send_line(instance.command_port, f"/delivery Sink{index} stream")
        send_line(instance.command_port, f"/routes add load{index} Source{index} Sink{index}")
        sources.append(Source(f"Source{index}", source_uuid, port, source_rate, payload_bytes))
        sinks.append(sink)
    return sources, sinks


def run(seconds: float, sink_rate: float, factor: float, count: int, stream: bool, payload_bytes: int) -> int:
    folder = Path(tempfile.mkdtemp(prefix="orch-overload-"))
    instance = start_instance(folder, routers=1)
    samples: dict[str, list[tuple[float, int]]] = {}
    sources: list[Source] = []
    sinks: list[LineSink] = []
    try:
        sources, sinks = setup(instance, count, sink_rate, sink_rate * factor, stream, payload_bytes)
        pids = processes(instance)
        threads = [threading.Thread(target=source.run, daemon=True) for source in sources]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            now = time.monotonic() - started
            for name, pid in pids.items():
                kb = rss_kb(pid)
                if kb is not None:
                    samples.setdefault(name, []).append((now, kb))
            if int(now) % 10 == 0:
                print(f"{now:5.0f}s  delivered {sum(unique_seqs(s) for s in sinks)}  rss " +
                      " ".join(f"{n}={samples[n][-1][1] // 1024}M" for n in sorted(samples)), flush=True)
            time.sleep(1.0)
        gateway = json.loads(send_line(instance.command_port, "/status"))["Gateway"]
        for source in sources:
            source.stopping = True
        print("load over; sinks now take everything so what was accepted drains", flush=True)
        for sink in sinks:
            sink.delay_s = 0.0  # no limit
        for thread in threads:
            thread.join(DRAIN_STALL_S)
        accepted = sum(s.accepted for s in sources)
        delivered, last_progress = 0, time.monotonic()
        while time.monotonic() - last_progress < DRAIN_STALL_S and delivered < accepted:
            time.sleep(0.5)
            now_delivered = sum(unique_seqs(s) for s in sinks)
            if now_delivered > delivered:
                delivered, last_progress = now_delivered, time.monotonic()
        bounded = report(samples, seconds)
        offered = sink_rate * factor * count * seconds
        print(f"offered {offered:.0f} lines of {payload_bytes} bytes ({factor:g}x the sinks' {sink_rate * count:.0f}/s); accepted by the gateway {accepted}; "
              f"delivered {delivered} (unique); lost {accepted - delivered}")
        print(f"gateway at the end of the load: {json.dumps(gateway)}")
        print(f"memory bounded: {'yes' if bounded else 'NO'}")
        return 0 if bounded and delivered >= accepted else 1
    finally:
        stop_load(instance, sources, sinks)


def report(samples: dict[str, list[tuple[float, int]]], seconds: float) -> bool:
    """Print max RSS per process and whether it stayed flat after warm-up; True when every process did."""
    warm = min(WARMUP_S, seconds / 3)
    print(f"{'process':<12}{'rss@warm MB':>12}{'max MB':>9}{'end MB':>9}  flat after {warm:.0f}s")
    all_flat = True
    for name, series in sorted(samples.items()):
        at_warm = max((kb for t, kb in series if t <= warm), default=series[0][1])
        peak = max(kb for _, kb in series)
        flat = peak <= at_warm * (1 + FLAT_TOLERANCE) + FLAT_SLACK_KB
        all_flat &= flat
        print(f"{name:<12}{at_warm / 1024:>12.1f}{peak / 1024:>9.1f}{series[-1][1] / 1024:>9.1f}  {'yes' if flat else 'NO'}")
    return all_flat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the overload")
    parser.add_argument("--sink-rate", type=float, default=500.0, help="lines/s each sink takes")
    parser.add_argument("--factor", type=float, default=10.0, help="sources offer this many times the sink rate")
    parser.add_argument("--sources", type=int, default=2, help="source/sink pairs")
    parser.add_argument("--mixed", action="store_true", help="alternate message and stream delivery (the default is stream: a "
                        "connection per message drains the backlog the kernel holds after the load slowly)")
    parser.add_argument("--payload-bytes", type=int, default=500,
                        help="line length: large enough that a minute of overload cannot hide in kernel socket buffers")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the instance in run()'s finally
    return run(args.seconds, args.sink_rate, args.factor, args.sources, not args.mixed, args.payload_bytes)


if __name__ == "__main__":
    raise SystemExit(main())
