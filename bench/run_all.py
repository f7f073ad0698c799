"""Run every benchmark in turn, each in its own process, and print their figures.

    python -m bench.run_all                 # all of them (several minutes)
    python -m bench.run_all router scanner  # only these

Every benchmark measures its own baseline in the same run (a bare relay, a sequential sweep, an
idle system ...) and prints ratios: compare ratios within one run, not absolute figures across
machines or runs.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BENCHMARKS = {  # name on the command line: module in bench/, run from the repository root
    "lifecycle": "lifecycle_bench",
    "gateway": "gateway_bench",
    "router": "router_bench",
    "latency": "latency_bench",
    "hop": "hop_floor",
    "control": "control_bench",
    "targets": "targets_bench",
    "scanner": "scanner_bench",
    "ui": "ui_bench",
    "rules": "rules_bench",
    "faults": "faults",
    "isolation": "isolation_bench",
    "overload": "overload",
    "multihost": "multihost_bench",
    "state": "state_bench",
    "bringup": "bringup_bench",
}


def main(argv: list[str]) -> int:
    wanted = argv or list(BENCHMARKS)
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failures = 0
    for name in wanted:
        module = BENCHMARKS[name]
        if not (BENCH_DIR / f"{module}.py").exists():
            print(f"== {name}: bench/{module}.py not present, skipped")
            continue
        print(f"== {name} (python -m bench.{module})", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{module}"], cwd=BENCH_DIR.parent)
        print(f"== {name}: exit {code} after {time.monotonic() - started:.0f}s\n", flush=True)
        failures += code != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
