"""Lifecycle figures of a real instance: start-up time to ready, idle memory, SIGKILL-to-replacement time.

    python bench/lifecycle_bench.py [--routers N] [--rounds K]

Runs `launch.py --headless` in a temporary folder on ephemeral ports (it scans only its own
command port), so it is safe beside a live instance.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from actors.supervisor.supervisor import DEFAULT_ROUTERS  # noqa: E402
from conftest import start_instance, wait_until  # noqa: E402


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
    args = parser.parse_args()
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
