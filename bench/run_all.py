"""Run every benchmark in turn, each in its own process, and print their figures.

    python bench/run_all.py                 # all of them (several minutes)
    python bench/run_all.py router scanner  # only these

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
BENCHMARKS = {
    "lifecycle": "lifecycle_bench.py",
    "gateway": "gateway_bench.py",
    "router": "router_bench.py",
    "scanner": "scanner_bench.py",
    "ui": "ui_bench.py",
    "rules": "rules_bench.py",
    "faults": "faults.py",
    "isolation": "isolation_bench.py",
    "overload": "overload.py",
    "multihost": "multihost_bench.py",
    "state": "state_bench.py",
    "bringup": "bringup_bench.py",
}


def main(argv: list[str]) -> int:
    wanted = argv or list(BENCHMARKS)
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failures = 0
    for name in wanted:
        script = BENCH_DIR / BENCHMARKS[name]
        if not script.exists():
            print(f"== {name}: {script.name} not present, skipped")
            continue
        print(f"== {name} ({script.name})", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(script)], cwd=BENCH_DIR.parent)
        print(f"== {name}: exit {code} after {time.monotonic() - started:.0f}s\n", flush=True)
        failures += code != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
