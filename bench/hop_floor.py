"""The floor of one gateway -> router hop: a bare pyzmq DEALER pair over ipc between two processes.

    python -m bench.hop_floor [--rates 10,1000] [--count 1000]

The receiver blocks in recv (no event loop), so this is what the hop costs before any of our code
runs; latency_bench prints it beside its own "gateway -> router" stage, measured in the same run.
Both processes read the same clock (perf_counter_ns on one machine).
"""
from __future__ import annotations

import argparse
import multiprocessing
import struct
import tempfile
import time
from pathlib import Path

import zmq

STAMP = struct.Struct("q")
PAYLOAD_PAD = b"x" * 40
CONNECT_SETTLE_S = 0.3
SPIN_BELOW_S = 0.0003  # sleep until this close to the send time, then spin (a sleep overshoots by ~0.1 ms)


def _receive(endpoint: str, count: int, results: "multiprocessing.Queue[object]") -> None:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.bind(endpoint)
    results.put("bound")
    delays = []
    for _ in range(count):
        message = sock.recv()
        delays.append(time.perf_counter_ns() - STAMP.unpack_from(message)[0])
    delays.sort()
    results.put((delays[len(delays) // 2] / 1e6, delays[int(len(delays) * 0.99)] / 1e6))
    context.destroy(linger=0)


def measure(rate: float, count: int) -> tuple[float, float]:
    """(p50, p99) in ms of one paced ipc hop at rate messages/s."""
    endpoint = f"ipc://{Path(tempfile.mkdtemp(prefix='hop-floor-')) / 'hop.ipc'}"
    results: "multiprocessing.Queue[object]" = multiprocessing.Queue()
    receiver = multiprocessing.Process(target=_receive, args=(endpoint, count, results))
    receiver.start()
    context = zmq.Context()
    try:
        results.get(timeout=10)
        sock = context.socket(zmq.DEALER)
        sock.connect(endpoint)
        time.sleep(CONNECT_SETTLE_S)
        period, due = 1.0 / rate, time.perf_counter()
        for _ in range(count):
            due += period
            while (left := due - time.perf_counter()) > 0:
                if left > SPIN_BELOW_S:
                    time.sleep(left - SPIN_BELOW_S)
            sock.send(STAMP.pack(time.perf_counter_ns()) + PAYLOAD_PAD)
        p50, p99 = results.get(timeout=30)  # type: ignore[misc]
        return p50, p99
    finally:
        receiver.join(5)
        if receiver.is_alive():
            receiver.kill()
        context.destroy(linger=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10,1000", help="messages/s, comma separated")
    parser.add_argument("--count", type=int, default=1000, help="messages per rate (at least 100 at low rates)")
    args = parser.parse_args()
    for rate in (float(r) for r in args.rates.split(",")):
        count = max(100, min(args.count, int(rate * 20)))
        p50, p99 = measure(rate, count)
        print(f"bare ipc hop at {rate:.0f} msg/s ({count} messages): p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
