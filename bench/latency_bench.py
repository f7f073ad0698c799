"""Latency breakdown: where a payload's time goes, per stage, p50/p99, at 10, 1,000 and 10,000 msg/s, both delivery modes.

    python -m bench.latency_bench [--rates 10,1000,10000] [--seconds 3] [--modes stream,message] [--routers 1]

Starts the orchestrator (launch.py --headless, temporary folder, ephemeral ports) with 4 sources ->
4 sinks (router_bench's helpers), subscribes to the routers' trace topic (Topic.TRACE: routers
sample one batch per 2 ms only while someone subscribes, nothing otherwise), sends paced load and
prints, per stage, p50 and p99 in ms:

  source -> gw sent   the source's write, TCP into the gateway, read, parse, batch, zmq send
  gw -> router        the ZeroMQ hop (ipc) and the router's loop picking the batch up
  router -> sink      decode, route lookup, hand-off (a direct write, or the sink worker's queue)
  sink -> written     the write itself (stream), or the worker thread's turn + connect + write (message)
  total to written    source's write to the payload's write at the router
  end to end          measured by the sinks over every payload (not only sampled ones)

Times cross processes on one machine: CLOCK_MONOTONIC (the sources') and the wall clock (the
actors' stamps) are tied once, here.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any


import zmq

from actors.core.protocol import Topic, Trace, decode_as
from bench.hop_floor import measure as hop_floor
from bench.router_bench import SOURCES, Helper, Orchestrator, percentile, run_load

STAGES = ("source -> gw sent", "gw -> router", "router -> sink", "sink -> written", "total to written")
SUBSCRIBE_SETTLE_S = 0.5
HOP_FLOOR_MAX_RATE = 1000  # above it the stage is queueing, not the hop
HOP_FLOOR_MIN_COUNT = 100
POLL_MS = 100
NS_PER_S = 1e9


class TraceCollector:
    """Reads the routers' trace topic in a thread while a run goes on."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, Topic.TRACE.value)
        self.sock.connect(endpoint)
        self.traces: list[list[Any]] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            if self.sock.poll(POLL_MS):
                self.traces.append(decode_as(self.sock.recv_multipart()[1], Trace).stages)

    def take(self) -> list[list[Any]]:
        traces, self.traces = self.traces, []
        return traces

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()
        self.context.term()


def stage_times(trace: list[Any], wall_minus_mono: float) -> list[float] | None:
    """Stage durations (s) of one trace [head, gw sent, router received, handed, written], or None when incomplete."""
    if len(trace) < 5:
        return None
    head, sent, received, handed, written = trace[:5]
    try:
        source_wall = int(bytes(head).split()[2]) / NS_PER_S + wall_minus_mono
    except (IndexError, ValueError):
        return None
    return [sent - source_wall, received - sent, handed - received, written - handed, written - source_wall]


def summarize(traces: list[list[Any]], wall_minus_mono: float) -> dict[str, tuple[float | None, float | None]]:
    rows = [times for trace in traces if (times := stage_times(trace, wall_minus_mono)) is not None]
    result = {}
    for index, stage in enumerate(STAGES):
        values = sorted(int(row[index] * NS_PER_S) for row in rows)
        result[stage] = (percentile(values, 0.5), percentile(values, 0.99))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10,1000,10000", help="paced total msg/s, comma separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each paced run (10 msg/s runs last at least 100 messages)")
    parser.add_argument("--modes", default="stream,message")
    parser.add_argument("--routers", type=int, default=1)
    args = parser.parse_args()
    wall_minus_mono = time.time() - time.monotonic()
    sinks = Helper("--role", "sinks")
    rows: list[tuple[str, int, int, dict[str, Any], dict[str, tuple[float | None, float | None]]]] = []
    try:
        ports = sinks.read()
        for mode in args.modes.split(","):
            orch = Orchestrator(args.routers)
            collector = TraceCollector(orch.runtime.endpoints.events_out)
            try:
                targets = orch.wire(ports, mode)
                time.sleep(SUBSCRIBE_SETTLE_S)
                for rate in (float(r) for r in args.rates.split(",")):
                    count = max(int(rate / SOURCES * args.seconds), 100 // SOURCES)
                    collector.take()
                    result = run_load(sinks, targets, count, rate)
                    traces = collector.take()
                    rows.append((mode, int(rate), len(traces), result, summarize(traces, wall_minus_mono)))
                    print(f"{mode} {rate:.0f} msg/s: {json.dumps(result)}; {len(traces)} traces", flush=True)
            finally:
                collector.close()
                orch.stop()
    finally:
        sinks.stop()
    print()
    print(f"{'mode':<8} {'msg/s':>6} {'traces':>6} | " + " | ".join(f"{s:>18}" for s in (*STAGES, "end to end (sinks)")))
    print(f"{'':<8} {'':>6} {'':>6} | " + " | ".join(f"{'p50 / p99 ms':>18}" for _ in range(len(STAGES) + 1)))
    for mode, rate, n, result, stages in rows:
        cells = [f"{p50!s:>8} / {p99!s:<7}" for p50, p99 in stages.values()]
        cells.append(f"{result['p50_ms']!s:>8} / {result['p99_ms']!s:<7}")
        print(f"{mode:<8} {rate:>6} {n:>6} | " + " | ".join(f"{c:>18}" for c in cells))
    print("\nthe floor of the gateway -> router stage, same run (python -m bench.hop_floor):")
    for rate in sorted({rate for _, rate, _, _, _ in rows if rate <= HOP_FLOOR_MAX_RATE}):
        p50, p99 = hop_floor(rate, max(HOP_FLOOR_MIN_COUNT, int(rate * args.seconds)))
        print(f"  bare pyzmq ipc hop, blocking receiver, {rate} msg/s: p50 {p50:.3f} / p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
