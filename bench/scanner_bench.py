"""Wall time of one discovery sweep of 6,001 loopback ports: our concurrent sweep vs one port at a time.

Not a test. It first checks that nothing but its own fakes listens in the range it picks (it binds
every port; if any is taken it shifts the range), so no other service on the machine is probed.
Inside the range it starts a few fake peripherals, silent ports (accept, never answer), a garbage
port and a port that closes at once. Then, in the same run, it measures:

* the scanner's sweep (actors.scanner.probe.sweep, as the scanner actor runs it: bounded concurrency, short timeouts), several times;
* a sequential sweep in the original's style (blocking connect, /info, read; one port after the
  other) with the original's 5 s timeout, or a smaller one given by --sequential-timeout, in which
  case the 5 s figure is extrapolated (the timeout only matters on silent ports; it is printed).

Run: python -m bench.scanner_bench [--ports 6001] [--silent 2] [--sequential-timeout 5]
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import time
from pathlib import Path


from actors.scanner.probe import (ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S, EOF_PATTERN, MAX_ANSWER_BYTES, BadAnswer,
                            Outcome, Target, accepting, parse_info, probe_concurrency, slow_first, sweep)
from tests.support.fakes import FakeListener, InfoPeripheral, closing_port, garbage_port, silent_port

HOST = "127.0.0.1"
FIRST_CANDIDATE = 40000
SHIFT_STEP = 1000
HIGHEST_PORT = 65000
ORIGINAL_TIMEOUT_S = 5.0
PERIPHERALS = 3
CONCURRENT_RUNS = 6
PROC_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_LISTEN_STATE = "0A"
FD_HEADROOM = 2048
DEFAULT_KNOWN_PORTS = 101  # 6200-6300: the default sweep, measured alone on refused ports beside the whole range


def listening_ports() -> set[int] | None:
    """TCP ports something listens on (any address, IPv4 and IPv6), from /proc; None where /proc is unavailable."""
    ports: set[int] = set()
    for table in PROC_TCP_TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == TCP_LISTEN_STATE:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def reserve(port: int) -> socket.socket | None:
    """Bind the port on loopback without listening: nobody else can listen there while we hold it,
    and a probe to it is refused exactly as on a free port. None when the port cannot be bound."""
    sock = socket.socket()
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        return None
    return sock


class Reservation:
    """A block of ports we hold (bound, not listening) for the whole run, so only our fakes listen there."""

    def __init__(self, ports: list[int], held: dict[int, socket.socket], unbindable: list[int]) -> None:
        self.ports = ports
        self.held = held
        self.unbindable = unbindable  # in TIME_WAIT or used by outgoing connections: not listening

    def release(self, port: int) -> None:
        """Let one of our fakes bind this port."""
        sock = self.held.pop(port, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for sock in self.held.values():
            sock.close()
        self.held.clear()


def pick_range(count: int) -> Reservation:
    """From FIRST_CANDIDATE on, the first block of `count` ports where nothing listens; we hold it bound."""
    base = FIRST_CANDIDATE
    while base + count - 1 <= HIGHEST_PORT:
        ports = list(range(base, base + count))
        listeners = listening_ports()
        held = {port: sock for port in ports if (sock := reserve(port)) is not None}
        unbindable = [port for port in ports if port not in held]
        taken = unbindable if listeners is None else [port for port in unbindable if port in listeners]
        if not taken:
            return Reservation(ports, held, unbindable)
        for sock in held.values():
            sock.close()
        print(f"range {ports[0]}-{ports[-1]}: {len(taken)} port(s) in use (e.g. {taken[0]}); shifting")
        base += SHIFT_STEP
    raise SystemExit(f"no free block of {count} ports between {FIRST_CANDIDATE} and {HIGHEST_PORT}")


def foreign_listeners(ports: list[int], ours: set[int]) -> list[int]:
    """Ports of the range someone else started listening on since we checked (only possible on unheld ports)."""
    listeners = listening_ports() or set()
    return [port for port in ports if port in listeners and port not in ours]


def raise_fd_limit(needed: int) -> None:
    """Holding the range costs one descriptor per port: lift the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            raise SystemExit(f"need {needed} file descriptors to hold the port range, the hard limit is {hard}")


def start_fakes(reservation: Reservation, silent: int) -> tuple[list[FakeListener], dict[int, str]]:
    """Fakes spread over the range, each on a port we hold and release just for it; returns them and {port: kind}."""
    ports = sorted(reservation.held)
    kinds = ["peripheral"] * PERIPHERALS + ["silent"] * silent + ["garbage", "closes"]
    if len(kinds) >= len(ports):
        raise SystemExit(f"{len(kinds)} fakes do not fit in {len(ports)} ports")
    step = len(ports) // (len(kinds) + 1)
    fakes: list[FakeListener] = []
    layout: dict[int, str] = {}
    for index, kind in enumerate(kinds):
        port = ports[step * (index + 1)]
        reservation.release(port)
        if kind == "peripheral":
            fake: FakeListener = InfoPeripheral(f"Bench_{index}", port=port, config={"role": "bench"})
        else:
            fake = {"silent": silent_port, "garbage": garbage_port, "closes": closing_port}[kind](port)
        fakes.append(fake.start())
        layout[port] = kind
    return fakes, layout


def concurrent_sweep(ports: list[int], accepted_before: set[tuple[str, int]]) -> tuple[float, dict[Outcome, int], set[tuple[str, int]]]:
    """One sweep as the scanner actor does it (ports that accepted last time first); returns (seconds, outcome counts, accepted)."""
    targets = [Target(HOST, HOST, socket.AF_INET, port) for port in ports]
    began = time.perf_counter()
    results = asyncio.run(sweep(slow_first(targets, accepted_before)))
    seconds = time.perf_counter() - began
    counts: dict[Outcome, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    return seconds, counts, accepting(results)


def refused_sweep_cpu(ports: list[int], runs: int = CONCURRENT_RUNS) -> float:
    """Median CPU seconds (user+sys of this process) of one sweep of ports where every probe is refused (held bound, not listening)."""
    targets = [Target(HOST, HOST, socket.AF_INET, port) for port in ports]
    spent = []
    for _ in range(runs):
        began = time.process_time()
        results = asyncio.run(sweep(targets))
        spent.append(time.process_time() - began)
        if any(result.outcome is not Outcome.CLOSED for result in results):
            raise SystemExit("a port of the refused set answered: not counting it")
    return statistics.median(spent)


def sequential_probe(port: int, timeout: float) -> str:
    """The original's way: blocking connect with a timeout, /info, read until EOF/close/timeout."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((HOST, port))
            if sock.getsockname() == sock.getpeername():
                return "closed"  # connected to itself (the range overlaps the ephemeral ports)
            sock.sendall(b"/info\n")
        except OSError:
            return "closed"
        data = bytearray()
        try:
            while len(data) < MAX_ANSWER_BYTES and not EOF_PATTERN.search(data):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:  # a silent port costs the whole timeout
            if not data:
                return "silent"
        except OSError:
            pass  # reset by the peer: judge what arrived
    if not data:
        return "empty"
    try:
        parse_info(bytes(data))
    except BadAnswer:
        return "garbage"
    return "found"


def sequential_sweep(ports: list[int], timeout: float) -> tuple[float, dict[str, int]]:
    """Every port one after the other; returns (seconds, outcome counts)."""
    counts: dict[str, int] = {}
    began = time.perf_counter()
    for port in ports:
        outcome = sequential_probe(port, timeout)
        counts[outcome] = counts.get(outcome, 0) + 1
    return time.perf_counter() - began, counts


def check_still_ours(ports: list[int], ours: set[int]) -> None:
    """Stop before sweeping if anything but our fakes listens in the range."""
    foreign = foreign_listeners(ports, ours)
    if foreign:
        raise SystemExit(f"something else started listening on {foreign[:5]}: not probing it; run again")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", type=int, default=6001, help="ports in the swept range (default 6001)")
    parser.add_argument("--silent", type=int, default=2, help="silent ports inside the range (default 2)")
    parser.add_argument("--sequential-timeout", type=float, default=ORIGINAL_TIMEOUT_S,
                        help="per-port timeout of the sequential sweep; below 5 s the 5 s time is extrapolated")
    args = parser.parse_args()
    raise_fd_limit(args.ports + FD_HEADROOM)
    reservation = pick_range(args.ports)
    ports = reservation.ports
    print(f"range {ports[0]}-{ports[-1]} ({len(ports)} ports): nothing listens there; {len(reservation.held)} held bound by us for the run, "
          f"{len(reservation.unbindable)} not bindable but not listening (TIME_WAIT / outgoing connections)")
    fakes, layout = start_fakes(reservation, args.silent)
    try:
        print("fakes: " + ", ".join(f"{port}={kind}" for port, kind in sorted(layout.items())))
        print(f"scanner settings: {probe_concurrency()} probes at once, connect timeout {CONNECT_TIMEOUT_S}s, answer timeout {ANSWER_TIMEOUT_S}s")
        accepted: set[tuple[str, int]] = set()
        times = []
        cpu_began = time.process_time()
        for _ in range(CONCURRENT_RUNS):
            check_still_ours(ports, set(layout))
            seconds, counts, accepted = concurrent_sweep(ports, accepted)
            times.append(seconds)
        print(f"concurrent sweep: first (cold) {times[0]:.3f}s; later sweeps median {statistics.median(times[1:]):.3f}s, "
              f"min {min(times[1:]):.3f}s, max {max(times[1:]):.3f}s over {CONCURRENT_RUNS - 1} runs; outcomes {dict((o.value, n) for o, n in counts.items())}")
        print(f"CPU per concurrent sweep: {(time.process_time() - cpu_began) / CONCURRENT_RUNS:.3f}s (user+sys of this process, fakes included)")
        refused = [port for port in ports if port not in layout]  # held, or not bindable yet not listening (checked): all refuse
        for count in (DEFAULT_KNOWN_PORTS, len(refused)):
            if count <= len(refused):
                check_still_ours(ports, set(layout))
                cpu = refused_sweep_cpu(refused[:count])
                print(f"CPU per sweep of {count} refused ports: {cpu * 1000:.1f} ms median = {cpu / count * 1e6:.1f} us per port")
        check_still_ours(ports, set(layout))
        seq_seconds, seq_counts = sequential_sweep(ports, args.sequential_timeout)
        print(f"sequential sweep (timeout {args.sequential_timeout}s): {seq_seconds:.3f}s measured; outcomes {seq_counts}")
        if args.sequential_timeout < ORIGINAL_TIMEOUT_S:
            silent = seq_counts.get("silent", 0)
            extrapolated = seq_seconds + silent * (ORIGINAL_TIMEOUT_S - args.sequential_timeout)
            print(f"sequential sweep extrapolated to the original {ORIGINAL_TIMEOUT_S}s timeout: {extrapolated:.3f}s "
                  f"({silent} silent port(s) x {ORIGINAL_TIMEOUT_S}s + the measured rest)")
        else:
            extrapolated = seq_seconds
        print(f"speed-up: {extrapolated / times[0]:.0f}x cold, {extrapolated / statistics.median(times[1:]):.0f}x later; per extra silent port: sequential +{ORIGINAL_TIMEOUT_S}s, "
              f"concurrent +0s until {probe_concurrency()} of them (each holds one probe slot for at most {CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S}s)")
    finally:
        for fake in fakes:
            fake.stop()
        reservation.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
