"""Robot bring-up figures: 20 peripherals from launch to all registered, restart latency after kill -9, supervisor CPU.

    python -m bench.bringup_bench [--peripherals N] [--rounds K] [--idle-s S]

Runs `launch.py --headless` in a temporary folder on ephemeral ports with N fake peripherals
(tests/support/fake_peripheral.py: each a Python process that serves /info and registers on the command
port). The baseline is the same system with no launch file: the supervisor's CPU with N idle
peripherals is compared with its CPU without any.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


from actors.core.protocol import Op
from tests.support.instances import SUPPORT_DIR, Instance, start_instance, wait_until

FAKE = SUPPORT_DIR / "fake_peripheral.py"
ACTORS = ["broker", "state", "gateway", "router"]
TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def launch_file(count: int) -> str:
    return "".join(f"[peripherals.p{index:02d}]\ncommand = {json.dumps([sys.executable, str(FAKE), '--name', f'p{index:02d}'])}\n\n"
                   for index in range(count))


def rows(instance: Instance) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in instance.status().get("peripherals", [])}


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def supervisor_cpu_percent(instance: Instance, seconds: float) -> float:
    """The supervisor's CPU over a quiet window (nothing asks it anything meanwhile)."""
    before = cpu_seconds(instance.process.pid)
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(instance.process.pid) - before) / seconds


def cold_launch(count: int) -> tuple[Instance, float, float]:
    """Start an instance with `count` peripherals: seconds to orchestrator ready, and to every peripheral registered."""
    folder = Path(tempfile.mkdtemp(prefix="orch-bench-bringup-"))
    (folder / "config").mkdir()
    (folder / "config" / "peripherals.toml").write_text(launch_file(count))
    started = time.monotonic()
    instance = start_instance(folder, only=ACTORS, wait=False)

    def all_registered() -> bool:
        try:
            table = rows(instance)
        except Exception:  # noqa: BLE001 - not answering yet
            return False
        return len(table) == count and all(row["registered"] for row in table.values())

    wait_until(all_registered, TIMEOUT_S, 0.05, f"{count} peripherals registered")
    registered = time.monotonic() - started
    return instance, float(instance.status()["ready_after_s"] or 0.0), registered


def restart_latency(instance: Instance, name: str) -> tuple[float, float]:
    """kill -9 of a peripheral: seconds until its new process runs, and until it has registered again."""
    old = rows(instance)[name]["pid"]
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    row = wait_until(lambda: (r := rows(instance)[name])["pid"] not in (None, old) and r, TIMEOUT_S, 0.01, f"{name} restarted")
    running = time.monotonic() - killed
    wait_until(lambda: rows(instance)[name]["registered"], TIMEOUT_S, 0.01, f"{name} registered again")
    assert row["restarts"] >= 1
    return running, time.monotonic() - killed


def baseline_cpu(idle_s: float) -> float:
    folder = Path(tempfile.mkdtemp(prefix="orch-bench-bringup-base-"))
    instance = start_instance(folder, only=ACTORS)
    try:
        return supervisor_cpu_percent(instance, idle_s)
    finally:
        instance.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peripherals", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    base = baseline_cpu(args.idle_s)
    instance, ready_s, registered_s = cold_launch(args.peripherals)
    try:
        print(f"launch -> orchestrator ready: {ready_s:.2f} s; launch -> all {args.peripherals} peripherals registered: {registered_s:.2f} s")
        time.sleep(1.0)
        busy = supervisor_cpu_percent(instance, args.idle_s)
        print(f"supervisor CPU over {args.idle_s:.0f} s: {base:.2f} % without peripherals, {busy:.2f} % with {args.peripherals} idle ones "
              f"(+{busy - base:.2f} points)")
        figures = [restart_latency(instance, f"p{index:02d}") for index in range(args.rounds)]
        running = [f[0] for f in figures]
        registered = [f[1] for f in figures]
        print(f"kill -9 -> running again: median {statistics.median(running) * 1000:.0f} ms (max {max(running) * 1000:.0f}); "
              f"-> registered again: median {statistics.median(registered) * 1000:.0f} ms (max {max(registered) * 1000:.0f}) "
              f"[{args.rounds} rounds; includes the first restart backoff of 0.5 s]")
        listing = instance.control(Op.CONTROL_PERIPHERAL, action="list")
        assert all(row["state"] == "running" for row in listing["peripherals"])
    finally:
        instance.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
