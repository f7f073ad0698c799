"""Latency under control traffic: commands while data flows, and data while someone watches.

    python -m bench.control_bench [--rate 1000] [--seconds 8] [--commands-per-s 20]

One orchestrator (launch.py --headless, temporary folder, ephemeral ports), 4 sources -> 4 sinks
in stream mode (router_bench's helpers). Printed side by side, all from this one run:

  * `/help` and `/routes info` round trips (a new connection each, as a client does), p50/p99 in ms:
    with no data flowing, then while the paced load flows;
  * the payloads' end-to-end p50/p99 at the same paced rate: alone, then with the terminal UI
    attached (in a private tmux server) and a `/tap` client reading one route's live payloads.

The ratio column compares each figure with its own quiet baseline from the same run.
"""
from __future__ import annotations

import argparse
import shlex
import socket
import sys
import threading
import time

from bench.router_bench import SOURCES, Helper, Orchestrator, command, run_load
from bench.ui_bench import Tmux
from tests.support.instances import REPO_ROOT

COMMANDS = ("/help", "/routes info")
QUIET_SAMPLES = 200
TAP_READ_BYTES = 65536
UI_CONNECT_TIMEOUT_S = 10.0


def percentiles_ms(samples: list[float]) -> tuple[float | None, float | None]:
    """(p50, p99) in ms of samples in seconds."""
    if not samples:
        return None, None
    ordered = sorted(samples)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)  # noqa: E731
    return pick(0.50), pick(0.99)


def time_command(port: int, line: str) -> float:
    began = time.perf_counter()
    reply = command(port, line)
    elapsed = time.perf_counter() - began
    if not reply:
        raise RuntimeError(f"{line!r} got no reply")
    return elapsed


def quiet_commands(port: int) -> dict[str, list[float]]:
    return {line: [time_command(port, line) for _ in range(QUIET_SAMPLES)] for line in COMMANDS}


class CommandLoad:
    """Sends each command in turn, commands_per_s in total, from a thread, until stopped."""

    def __init__(self, port: int, commands_per_s: float) -> None:
        self.port = port
        self.interval_s = 1.0 / commands_per_s
        self.samples: dict[str, list[float]] = {line: [] for line in COMMANDS}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        turn = 0
        while not self.stopping.wait(self.interval_s):
            line = COMMANDS[turn % len(COMMANDS)]
            self.samples[line].append(time_command(self.port, line))
            turn += 1

    def stop(self) -> dict[str, list[float]]:
        self.stopping.set()
        self.thread.join(10)
        return self.samples


class TapReader:
    """A /tap client on one route, reading (and counting) every line it is sent."""

    def __init__(self, port: int, route: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(f"/tap {route}\n".encode())
        self.bytes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while chunk := self.sock.recv(TAP_READ_BYTES):
                self.bytes += len(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def attach_ui(orch: Orchestrator) -> Tmux:
    command_line = (f"cd {shlex.quote(str(REPO_ROOT))} && exec {shlex.quote(sys.executable)} -m actors.ui "
                    f"--runtime {shlex.quote(orch.runtime.to_json())} --name ui-control-bench")
    tmux = Tmux(command_line)
    deadline = time.monotonic() + UI_CONNECT_TIMEOUT_S
    while "actors" not in tmux.screen():
        if time.monotonic() > deadline:
            tmux.close()
            raise RuntimeError("the UI did not connect")
        time.sleep(0.1)
    return tmux


def row(label: str, figures: tuple[float | None, float | None], base: tuple[float | None, float | None], extra: str = "") -> None:
    p50, p99 = figures
    ratio = f"{p99 / base[1]:.2f}" if p99 and base[1] else "-"
    print(f"{label:<58} {p50!s:>8} {p99!s:>8} {ratio:>8}  {extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced total payloads/s")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each paced run")
    parser.add_argument("--commands-per-s", type=float, default=20.0, help="commands sent while the load flows")
    args = parser.parse_args()
    count = int(args.rate * args.seconds / SOURCES)
    sinks = Helper("--role", "sinks")
    orch = None
    try:
        sink_ports = sinks.read()
        orch = Orchestrator(1)
        targets = orch.wire(sink_ports, "stream")
        quiet = quiet_commands(orch.command_port)
        alone = run_load(sinks, targets, count, args.rate)
        load = CommandLoad(orch.command_port, args.commands_per_s)
        loaded = run_load(sinks, targets, count, args.rate)
        busy = load.stop()
        tmux = attach_ui(orch)
        tap = TapReader(orch.command_port, "route0")
        try:
            watched = run_load(sinks, targets, count, args.rate)
        finally:
            tap.close()
            tmux.close()
        print(f"4 sources -> 4 sinks, stream delivery, paced {args.rate:.0f} payloads/s for {args.seconds:.0f} s per run")
        print(f"{'figure':<58} {'p50 ms':>8} {'p99 ms':>8} {'x quiet':>8}")
        for line in COMMANDS:
            row(f"{line}, nothing flowing ({len(quiet[line])})", percentiles_ms(quiet[line]), percentiles_ms(quiet[line]))
            row(f"{line}, while the load flows ({len(busy[line])})", percentiles_ms(busy[line]), percentiles_ms(quiet[line]))
        base = (alone["p50_ms"], alone["p99_ms"])
        for label, result, note in (("payloads alone", alone, ""), ("payloads with commands", loaded, ""),
                                    ("payloads with the UI and a /tap", watched, f"tap read {tap.bytes} bytes")):
            row(f"{label} ({result['delivered']} delivered, {result['lost']} lost)", (result["p50_ms"], result["p99_ms"]), base, note)
    finally:
        if orch is not None:
            orch.stop()
        sinks.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
