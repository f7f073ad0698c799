"""How often a process woke, from /proc: what the idle tests count (the benchmarks measure CPU as well)."""
from __future__ import annotations

import os


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of pid: how often it woke."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as status:
            total += sum(int(line.split()[1]) for line in status
                         if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")))
    return total


def main_thread_sleeps(pid: int) -> int:
    """Voluntary context switches of a process's main thread: how often its loop went to sleep, so woke again (the
    involuntary ones are preemptions by whatever else the machine runs, not wake-ups)."""
    with open(f"/proc/{pid}/task/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches:"))
