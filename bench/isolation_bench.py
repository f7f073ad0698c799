"""Bad-sink rows: does a dead or stuck sink slow the healthy route of the same source?

    python -m bench.isolation_bench [--rate 1000] [--phase 3] [--rounds 3] [--kinds down,deaf]

One source sends '<name> <seq>' lines at a steady rate to a healthy stream sink. Phases alternate
without and with a second route from the same source to a bad sink (``down``: nothing listens;
``deaf``: a stream sink that accepts and never reads), ``--rounds`` times each, in one run. For
every phase it prints the healthy route's sent, delivered, lost and p99 latency (send to
arrival); per kind, the median p99 with and without the bad sink and their ratio.
Everything runs on loopback ports this script opened itself, in a temporary folder.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path


from tests.support.instances import Instance, free_port, send_line, start_instance
from bench.faults import Source, analyse, arrivals, settle, start_sink
from tests.support.fakes import DeafSink, LineSink

WARM_UP_S = 1.0
P99 = 0.99
# Before the deaf rounds, this much is routed to the deaf sink so the kernel buffers between the
# router and it are full: every later write to it blocks (the case that stalled main for good).
FILL_LINES = 8000
FILL_LINE_BYTES = 1000
FILL_SETTLE_S = 1.0


@dataclass
class PhaseRow:
    kind: str
    with_bad: bool
    sent: int
    delivered: int
    lost: int
    p99_ms: float | None


def p99_latency_ms(source: Source, sink: LineSink, since: float, until: float) -> float | None:
    """The 99th percentile of first-arrival minus send time, over lines sent in [since, until)."""
    sent_at = {seq: at for seq, at in source.sent if since <= at < until}
    first: dict[int, float] = {}
    for name, seq, at in arrivals(sink):
        if name == source.name and seq in sent_at and seq not in first:
            first[seq] = at
    latencies = sorted(first[seq] - sent_at[seq] for seq in first)
    if not latencies:
        return None
    return round(latencies[min(len(latencies) - 1, int(len(latencies) * P99))] * 1000, 1)


def register(instance: Instance, name: str, port: int, stream: bool = True) -> None:
    send_line(instance.command_port, f"/register {name} {uuidlib.uuid4()} {port}")
    if stream:
        send_line(instance.command_port, f"/delivery {name} stream")


def start_bad(kind: str) -> tuple[int, DeafSink | None]:
    """A port for the bad sink and what listens there (None: nothing)."""
    if kind == "down":
        return free_port(), None
    deaf = DeafSink().start()
    return deaf.port, deaf


def router_dropped(instance: Instance) -> int:
    """What the routers dropped so far (queue and age bounds), from their heartbeats."""
    return sum(int((c.get("stats") or {}).get("dropped") or 0) for c in instance.status()["children"] if c["name"].startswith("router"))


def fill_deaf(instance: Instance) -> None:
    """Route a burst of long lines from a filler source to the deaf sink, then remove the route: its connection stays full."""
    filler_uuid = str(uuidlib.uuid4())
    ack = send_line(instance.command_port, f"/register Filler {filler_uuid} 1")
    send_line(instance.command_port, "/routes add fill Filler Baddeaf")
    with socket.create_connection(("127.0.0.1", int(ack.split()[1])), timeout=5.0) as conn:
        conn.sendall(f"{filler_uuid}\n".encode() + (b"f" * FILL_LINE_BYTES + b"\n") * FILL_LINES)
    time.sleep(FILL_SETTLE_S)
    send_line(instance.command_port, "/routes remove fill")


def measure_phase(instance: Instance, kind: str, with_bad: bool, source: Source, sink: LineSink,
                  phase_s: float) -> PhaseRow:
    if with_bad:
        reply = send_line(instance.command_port, f"/routes add bad{kind} Source Bad{kind}")
        assert "added" in reply, reply
    since = time.monotonic()
    time.sleep(phase_s)
    until = time.monotonic()
    if with_bad:
        send_line(instance.command_port, f"/routes remove bad{kind}")
    settle([source], [sink], since, until)
    sent, delivered, lost, _, _ = analyse([source], [sink], since, until)
    return PhaseRow(kind, with_bad, sent, delivered, lost, p99_latency_ms(source, sink, since, until))


def run(rate: float, phase_s: float, rounds: int, kinds: list[str]) -> list[PhaseRow]:
    folder = Path(tempfile.mkdtemp(prefix="orch-isolation-"))
    instance = start_instance(folder, only=["broker", "state", "gateway", "router"])
    sink = start_sink()
    bad_sinks: list[DeafSink] = []
    source = None
    rows: list[PhaseRow] = []
    try:
        register(instance, "Healthy", sink.port)
        source_uuid = str(uuidlib.uuid4())
        ack = send_line(instance.command_port, f"/register Source {source_uuid} 1")
        send_line(instance.command_port, "/routes add healthy Source Healthy")
        source = Source("Source", source_uuid, int(ack.split()[1]), rate)
        threading.Thread(target=source.run, daemon=True).start()
        for kind in kinds:
            port, bad = start_bad(kind)
            if bad is not None:
                bad_sinks.append(bad)
            register(instance, f"Bad{kind}", port)
        time.sleep(WARM_UP_S)
        for kind in kinds:
            if kind == "deaf":
                fill_deaf(instance)
            dropped_before = router_dropped(instance)
            for _ in range(rounds):
                for with_bad in (False, True):
                    rows.append(measure_phase(instance, kind, with_bad, source, sink, phase_s))
            print(f"{kind}: the router dropped {router_dropped(instance) - dropped_before} payloads for the bad sink "
                  f"(queue/age bounds) during its rounds", flush=True)
    finally:
        if source is not None:
            source.stopping = True
        sink.stop()
        for bad in bad_sinks:
            bad.stop()
        instance.stop()
    return rows


def print_rows(rows: list[PhaseRow]) -> None:
    print(f"{'bad sink':<10}{'phase':<9}{'sent':>7}{'deliv':>7}{'lost':>6}{'p99 ms':>9}")
    for r in rows:
        p99 = "-" if r.p99_ms is None else f"{r.p99_ms:.1f}"
        print(f"{r.kind:<10}{'with' if r.with_bad else 'without':<9}{r.sent:>7}{r.delivered:>7}{r.lost:>6}{p99:>9}")
    for kind in dict.fromkeys(r.kind for r in rows):
        with_p99 = [r.p99_ms for r in rows if r.kind == kind and r.with_bad and r.p99_ms is not None]
        without_p99 = [r.p99_ms for r in rows if r.kind == kind and not r.with_bad and r.p99_ms is not None]
        lost = sum(r.lost for r in rows if r.kind == kind)
        if with_p99 and without_p99:
            a, b = statistics.median(with_p99), statistics.median(without_p99)
            ratio = f"{a / b:.2f}x" if b else "-"
            print(f"{kind}: healthy p99 median with {a:.1f} ms, without {b:.1f} ms, ratio {ratio}; healthy lost {lost}")
        else:
            print(f"{kind}: no latency measured (healthy lost {lost})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000, help="messages per second from the source")
    parser.add_argument("--phase", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="without/with alternations per kind")
    parser.add_argument("--kinds", default="down,deaf", help="bad sinks to try: down, deaf")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    print(f"isolation: one source at {args.rate:.0f} msg/s, a healthy stream sink, {args.rounds}x without/with a bad sink ({', '.join(kinds)}), {args.phase:g}s phases")
    print_rows(run(args.rate, args.phase, args.rounds, kinds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
