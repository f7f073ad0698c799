"""Lifecycle figures of a real instance: start-up time to ready, idle memory, SIGKILL-to-replacement time,
and what the system costs while nothing happens (idle CPU % and wake-ups per second, per process and in total).

    python -m bench.lifecycle_bench [--routers N] [--rounds K] [--idle-seconds S] [--scenarios headless,ui,loaded]

Runs `launch.py --headless` in a temporary folder on ephemeral ports, so it is safe beside a live
instance. For the idle figures the instance has the default scan settings (101 ports every 5 s),
on loopback ports checked free first (every probe is refused, nothing foreign is probed):

* headless: nothing else;
* ui: the terminal UI attached in a private tmux server (its screen unchanged);
* loaded: 10 registered peripherals (fakes in this process, answering /info inside the scanned
  range) and 5 idle routes between them.

CPU is the sum over every thread of /proc/<pid>/task/<tid>/schedstat (nanoseconds on a CPU);
wake-ups are the voluntary + involuntary context switches of every thread (/proc/<pid>/task/*/status).
The issue's reported figures use --idle-seconds 120 (the default); use e.g. 20 for a quick run.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path


from actors.supervisor.supervisor import DEFAULT_ROUTERS
from tests.support.instances import free_port_range, start_instance, wait_until
from tests.support.fakes import SinkPeripheral
from bench.ui_bench import SCREEN_TIMEOUT_S, Tmux

DEFAULT_IDLE_S = 120.0
SCAN_PORTS = 101  # the default known_ports (6200-6300), on free ports here
DEFAULT_SCAN_INTERVAL_S = 5
PERIPHERALS = 10
ROUTES = 5
SETTLE_S = 3.0  # after start-up or a change, before the window opens
NS_PER_S = 1e9
SCENARIOS = ("headless", "ui", "loaded")


def rss_kib(pid: int) -> int:
    """Resident set size of one process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (libzmq, the interpreter) split between the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def thread_totals(pid: int) -> tuple[int, int]:
    """(ns on a CPU, context switches) summed over every thread of pid; (0, 0) once it is gone."""
    cpu_ns = switches = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return cpu_ns, switches


def idle_cost(pids: dict[str, int], seconds: float) -> dict[str, tuple[float, float]]:
    """{name: (CPU % of one core, wake-ups per second)} over a window of seconds with nothing happening."""
    before = {name: thread_totals(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    after = {name: thread_totals(pid) for name, pid in pids.items()}
    return {name: (100.0 * (after[name][0] - before[name][0]) / NS_PER_S / elapsed, (after[name][1] - before[name][1]) / elapsed)
            for name in pids}


def print_cost(label: str, cost: dict[str, tuple[float, float]], seconds: float) -> None:
    total_cpu = sum(c for c, _ in cost.values())
    total_wakes = sum(w for _, w in cost.values())
    parts = ", ".join(f"{name} {c:.3f}%/{w:.1f}" for name, (c, w) in cost.items())
    print(f"idle {label:<9} over {seconds:.0f}s: total {total_cpu:.3f} % of one core, {total_wakes:.1f} wake-ups/s  ({parts})")


def process_ids(instance) -> dict[str, int]:
    """Supervisor and every child, by name."""
    pids = {"supervisor": instance.process.pid}
    pids.update({c["name"]: c["pid"] for c in instance.status()["children"] if c["pid"]})
    return pids


def idle_config(fakes: list[SinkPeripheral]) -> dict[str, object]:
    """Default scan settings (101 ports every 5 s): loopback ports free right now, and the fakes' own ports."""
    ports = free_port_range(SCAN_PORTS - len(fakes))
    spec = ",".join([f"{ports[0]}-{ports[-1]}", *(str(fake.port) for fake in fakes)])
    return {"known_ports": spec, "scan_interval": DEFAULT_SCAN_INTERVAL_S}


def add_peripherals(instance, fakes: list[SinkPeripheral]) -> None:
    """Register the fakes (the scanner finds them each sweep, too) and ROUTES idle routes between them."""
    for fake in fakes:
        instance.command(f"/register {fake.name} {fake.uuid} {fake.port}")
    for index in range(ROUTES):
        instance.command(f"/routes add idle{index} {fakes[2 * index].name} {fakes[2 * index + 1].name}")


def measure_idle(routers: int, seconds: float, scenarios: list[str]) -> None:
    """Each scenario on a fresh instance: settle, then one window of seconds."""
    for scenario in scenarios:
        folder = Path(tempfile.mkdtemp(prefix="orch-idle-"))
        fakes = [SinkPeripheral(name=f"Idle_{i:02d}").start() for i in range(PERIPHERALS)] if scenario == "loaded" else []
        instance = start_instance(folder, routers=routers, config=idle_config(fakes))
        tmux = None
        try:
            if scenario == "ui":
                command = (f"cd {shlex.quote(str(Path(__file__).resolve().parent.parent))} && exec {shlex.quote(sys.executable)} "
                           f"-m actors.ui --runtime {shlex.quote(instance.runtime.to_json())} --name ui-bench")
                tmux = Tmux(command)
                wait_until(lambda: "actors" in tmux.screen(), SCREEN_TIMEOUT_S, 0.05, "the UI to connect")
            elif scenario == "loaded":
                add_peripherals(instance, fakes)
            time.sleep(SETTLE_S)
            pids = process_ids(instance)
            if tmux is not None:
                pids["ui"] = tmux.pane_pid()
            print_cost(scenario, idle_cost(pids, seconds), seconds)
        finally:
            if tmux is not None:
                tmux.close()
            for fake in fakes:
                fake.stop()
            instance.stop()
            shutil.rmtree(folder, ignore_errors=True)


def measure_start(routers: int) -> tuple[float, float, object]:
    folder = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    started = time.monotonic()
    instance = start_instance(folder, routers=routers)
    wall = time.monotonic() - started
    return wall, instance.status()["ready_after_s"], instance


def measure_restart(instance, name: str) -> float:
    """Seconds from SIGKILL of a child until its replacement heartbeats."""
    old = instance.child_pid(name)
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)

    def replaced() -> bool:
        child = next(c for c in instance.status()["children"] if c["name"] == name)
        return child["pid"] not in (None, old) and child["ready"]
    wait_until(replaced, 20, 0.01, f"{name} to be replaced")
    return time.monotonic() - killed_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routers", type=int, default=DEFAULT_ROUTERS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=DEFAULT_IDLE_S, help="idle window per scenario (0: skip the idle figures)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"idle scenarios, comma separated ({', '.join(SCENARIOS)})")
    parser.add_argument("--idle-only", action="store_true", help="skip start-up, memory and restart figures")
    args = parser.parse_args()
    if args.idle_seconds > 0:
        measure_idle(args.routers, args.idle_seconds, [s for s in args.scenarios.split(",") if s])
    if args.idle_only:
        return 0
    wall, ready_after, instance = measure_start(args.routers)
    try:
        time.sleep(2.0)  # let it settle to idle
        children = instance.status()["children"]
        pids = [instance.process.pid] + [c["pid"] for c in children if c["pid"]]
        per_process = {c["name"]: rss_kib(c["pid"]) for c in children if c["pid"]}
        per_process["supervisor"] = rss_kib(instance.process.pid)
        total_mib = sum(per_process.values()) / 1024
        print(f"start-up: ready after {ready_after * 1000:.0f} ms (supervisor's own clock); {wall * 1000:.0f} ms wall including launch")
        print(f"idle memory: {sum(pss_kib(p) for p in pids) / 1024:.1f} MiB PSS (shared pages counted once) over {len(pids)} processes")
        print(f"idle memory: {total_mib:.1f} MiB RSS over {len(pids)} processes (" + ", ".join(f"{k} {v / 1024:.1f}" for k, v in per_process.items()) + ")")
        for name in [c["name"] for c in children]:
            times = [measure_restart(instance, name) for _ in range(args.rounds)]
            print(f"SIGKILL {name:<9} -> replacement ready: median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms ({args.rounds} rounds)")
    finally:
        instance.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
