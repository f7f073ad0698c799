"""Fault injection: steady data through several routes while each process is SIGKILLed in turn.

    python -m bench.faults [--rate 2000] [--phase 3] [--routers 2]

For every kill it prints: time until a message sent after the kill is delivered again, and per
phase the messages sent / delivered / lost / duplicated / out of order, and whether orch.cf and
routes.cf still parse and hold the route acknowledged just before the kill. Everything runs on
loopback ports this script opened itself, in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.fakes import LineSink
from tests.support.instances import REPO_ROOT, Instance, send_line, start_instance, wait_until

SOURCES = 2
RECONNECT_PAUSE_S = 0.02
SETTLE_STALL_S = 3.0  # after a phase, wait for late deliveries until none arrive for this long ...
SETTLE_MAX_S = 20.0  # ... or this long in all
# A connection per message costs the router a TCP connect; at 1,000/s for a minute loopback's ephemeral
# ports fill with TIME_WAIT and connect() itself slows to a crawl. The per-message route carries at most this:
MESSAGE_ROUTE_MAX_RATE = 250.0


def start_sink(per_message: bool = False) -> LineSink:
    """A sink peripheral on the monotonic clock of the sources. A per-message sink reads each connection to its end
    before accepting the next, so arrivals are in the order the router sent them; a stream sink reads every
    connection in one thread, the oldest first."""
    return LineSink(multiplexed=not per_message, clock=time.monotonic).start()


def arrivals(sink: LineSink) -> list[tuple[str, int, float]]:
    """(source name, seq, arrival time) of every '<name> <seq>' line the sink got."""
    found = []
    for line, at in sink.arrivals():
        source, _, seq = line.decode().partition(" ")
        if seq.isdigit():
            found.append((source, int(seq), at))
    return found


@dataclass
class Source:
    """A peripheral that sends '<name> <seq>' lines on its data port at a steady rate, reconnecting on failure."""

    name: str
    uuid: str
    data_port: int
    rate: float
    sent: list[tuple[int, float]] = field(default_factory=list)
    stopping: bool = False

    def run(self) -> None:
        seq, conn = 0, None
        interval = 1.0 / self.rate
        next_send = time.monotonic()
        while not self.stopping:
            if conn is None:
                try:
                    conn = socket.create_connection(("127.0.0.1", self.data_port), timeout=1.0)
                    conn.sendall(f"{self.uuid}\n".encode())
                except OSError:
                    conn = None
                    time.sleep(RECONNECT_PAUSE_S)
                    continue
            seq += 1
            try:
                conn.sendall(f"{self.name} {seq}\n".encode())
                self.sent.append((seq, time.monotonic()))
            except OSError:
                conn.close()
                conn = None
                seq -= 1  # resend this one on the new connection
                continue
            next_send += interval
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                next_send = time.monotonic()
        if conn is not None:
            conn.close()


@dataclass
class Row:
    victim: str
    resume_ms: float | None
    sent: int
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    files_ok: bool
    note: str = ""


def analyse(sources: list[Source], sinks: list[LineSink], since: float, until: float) -> tuple[int, int, int, int, int]:
    """Counts over messages sent in [since, until): sent, delivered (unique), lost, duplicated, out of order."""
    sent = delivered = lost = duplicated = disorder = 0
    for source, sink in zip(sources, sinks):
        window = {seq for seq, at in source.sent if since <= at < until}
        seen: set[int] = set()
        highest = 0
        for seq in [seq for name, seq, _ in arrivals(sink) if name == source.name]:
            if seq in seen:
                duplicated += seq in window
                continue
            seen.add(seq)
            if seq < highest and seq in window:
                disorder += 1
            highest = max(highest, seq)
        sent += len(window)
        got = len(window & seen)
        delivered += got
        lost += len(window) - got
    return sent, delivered, lost, duplicated, disorder


def resume_time(sources: list[Source], sinks: list[LineSink], killed_at: float) -> float | None:
    """Seconds from the kill until the first message sent after it arrives."""
    firsts = []
    for source, sink in zip(sources, sinks):
        sent_after = {seq: at for seq, at in source.sent if at >= killed_at}
        times = [at for name, seq, at in arrivals(sink) if name == source.name and seq in sent_after]
        if not times:
            return None
        firsts.append(min(times) - killed_at)
    return max(firsts)


def settle(sources: list[Source], sinks: list[LineSink], since: float, until: float) -> None:
    """Wait until what was sent in the phase arrived, or nothing new arrives for SETTLE_STALL_S: lost means never delivered."""
    last, last_change, deadline = -1, time.monotonic(), time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline and time.monotonic() - last_change < SETTLE_STALL_S:
        _, delivered, lost, _, _ = analyse(sources, sinks, since, until)
        if lost == 0:
            return
        if delivered != last:
            last, last_change = delivered, time.monotonic()
        time.sleep(0.1)


def files_hold(instance: Instance, route: str, peripheral: str | None = None) -> bool:
    """Both files parse, hold the route and (if given) the peripheral uuid acknowledged before the kill."""
    try:
        routes = json.loads((instance.config_dir / "routes.cf").read_text())
        config = json.loads((instance.config_dir / "orch.cf").read_text())
    except (OSError, ValueError):
        return False
    registered = peripheral is None or any(p.get("uuid") == peripheral for p in config.get("peripherals", []))
    return registered and any(r["name"] == route for r in routes)


def register_probe_pair(instance: Instance) -> None:
    """A source and sink that carry no traffic: the probe routes added before each kill join them (never the load)."""
    send_line(instance.command_port, f"/register ProbeSrc {uuidlib.uuid4()} 1")
    send_line(instance.command_port, f"/register ProbeDst {uuidlib.uuid4()} 1")


def setup_routes(instance: Instance, rate: float) -> tuple[list[Source], list[LineSink]]:
    sources, sinks = [], []
    message_rate = min(rate / SOURCES, MESSAGE_ROUTE_MAX_RATE)
    for index in range(SOURCES):
        per_message = index % 2 == 0
        sink = start_sink(per_message)
        sink_uuid, source_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        send_line(instance.command_port, f"/register Sink{index} {sink_uuid} {sink.port}")
        ack = send_line(instance.command_port, f"/register Source{index} {source_uuid} 1")
        data_port = int(ack.split()[1])
        if index % 2:
            send_line(instance.command_port, f"/delivery Sink{index} stream")
        reply = send_line(instance.command_port, f"/routes add load{index} Source{index} Sink{index}")
        if "error" in reply.lower() or "unknown" in reply.lower():
            raise RuntimeError(f"could not add route: {reply}")
        share = message_rate if per_message else (rate - message_rate * ((SOURCES + 1) // 2)) / (SOURCES // 2)
        sources.append(Source(f"Source{index}", source_uuid, data_port, share))
        sinks.append(sink)
    return sources, sinks


def kill_and_measure(instance: Instance, victim: str, sources: list[Source], sinks: list[LineSink],
                     phase_s: float) -> Row:
    probe, probe_uuid = f"probe-{victim}", str(uuidlib.uuid4())
    ack = send_line(instance.command_port, f"/routes add {probe} ProbeSrc ProbeDst")
    registered = send_line(instance.command_port, f"/register Probe-{victim} {probe_uuid} 1").startswith("/ack")
    pid = instance.child_pid(victim)
    if pid is None:
        return Row(victim, None, 0, 0, 0, 0, 0, files_hold(instance, probe), "not running")
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    time.sleep(phase_s)
    wait_until(lambda: instance.child_pid(victim) not in (None, pid), 10, message=f"{victim} to be replaced")
    settle(sources, sinks, started, started + phase_s)
    acknowledged = "added" in ack.lower()
    files_ok = files_hold(instance, probe if acknowledged else "load0", probe_uuid if registered else None)
    send_line(instance.command_port, f"/routes remove {probe}")
    sent, delivered, lost, dup, disorder = analyse(sources, sinks, started, started + phase_s)
    note = "" if acknowledged and registered else "probe change not acknowledged"
    return Row(victim, _ms(resume_time(sources, sinks, started)), sent, delivered, lost, dup, disorder, files_ok, note)


def kill_supervisor(instance: Instance, folder: Path) -> Row:
    """SIGKILL the supervisor: no orphan may keep ports bound, and a fresh start must route again."""
    pids = [c["pid"] for c in instance.status()["children"] if c["pid"]]
    instance.process.kill()
    instance.process.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and "State:\tZ" not in Path(f"/proc/{p}/status").read_text() for p in pids):
        time.sleep(0.05)
    orphans = [p for p in pids if Path(f"/proc/{p}").exists() and "State:\tZ" not in Path(f"/proc/{p}/status").read_text()]
    started = time.monotonic()
    fresh = subprocess.Popen([sys.executable, str(REPO_ROOT / "launch.py"), "--headless", "--config-dir", str(instance.config_dir)],
                             cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    instance.process = fresh
    try:
        instance.wait_ready()
        ok = True
    except AssertionError:
        ok = False
    note = f"orphans left: {len(orphans)}; fresh start {'ready' if ok else 'FAILED'} in {(time.monotonic() - started) * 1000:.0f} ms"
    return Row("supervisor", None, 0, 0, 0, 0, 0, files_hold(instance, "load0"), note)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def run_faults(rate: float, phase_s: float, routers: int, victims: list[str] | None = None, with_supervisor: bool = True,
               folder: Path | None = None) -> list[Row]:
    folder = folder or Path(tempfile.mkdtemp(prefix="orch-faults-"))
    instance = start_instance(folder, routers=routers)
    rows: list[Row] = []
    sources: list[Source] = []
    sinks: list[LineSink] = []
    try:
        sources, sinks = setup_routes(instance, rate)
        register_probe_pair(instance)
        threads = [threading.Thread(target=s.run, daemon=True) for s in sources]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        names = victims or ["broker", "state", "gateway", *[f"router-{i}" for i in range(1, routers + 1)], "scanner"]
        for victim in names:
            rows.append(kill_and_measure(instance, victim, sources, sinks, phase_s))
        if with_supervisor:
            rows.append(kill_supervisor(instance, folder))
    finally:
        stop_load(instance, sources, sinks)
    return rows


def stop_load(instance: Instance, sources: list[Any], sinks: list[LineSink]) -> None:
    """Stop the sources' threads (each has a `stopping` flag), then the sinks, then the orchestrator."""
    for source in sources:
        source.stopping = True
    for sink in sinks:
        sink.stop()
    instance.stop()


def print_table(rows: list[Row]) -> None:
    print(f"{'killed':<12}{'resume ms':>10}{'sent':>8}{'deliv':>8}{'lost':>6}{'dup':>6}{'disorder':>9}  files  note")
    for r in rows:
        resume = "-" if r.resume_ms is None else f"{r.resume_ms:.0f}"
        print(f"{r.victim:<12}{resume:>10}{r.sent:>8}{r.delivered:>8}{r.lost:>6}{r.duplicated:>6}{r.out_of_order:>9}  {'ok' if r.files_ok else 'BAD':<5}  {r.note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000, help="messages per second in total")
    parser.add_argument("--phase", type=float, default=3.0, help="seconds of load measured after each kill")
    parser.add_argument("--routers", type=int, default=2)
    args = parser.parse_args()
    print(f"fault injection: {args.rate:.0f} msg/s over {SOURCES} routes (a per-message sink at most {MESSAGE_ROUTE_MAX_RATE:.0f}/s, a stream sink the rest), {args.routers} routers")
    print_table(run_faults(args.rate, args.phase, args.routers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
