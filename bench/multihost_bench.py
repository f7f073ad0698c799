"""Routing throughput with 1, 2 and 4 routers on one board, and with routers split over two boards, in one run.

    sudo python -m bench.multihost_bench [--seconds S] [--sources N] [--burst B]

Needs root: the two "boards" are network namespaces joined by a veth pair (tests/support/netns.py, a
test-only subnet). The main instance runs in A (gateway bound on A's address); the peripherals
(one sink in stream mode, N sources streaming unpaced "<i> <seq>" lines) run in B, so every
scenario carries the same traffic over the same link:

  1 board   ipc bus      routers 1 / 2 / 4 on A
  1 board   CURVE bus    2 routers on A, bus served on tcp off loopback (--bus): the encryption cost alone
  2 boards  CURVE bus    1+1 and 2+2 routers: half of them on B (launch.py --join --only router)

msgs/s is the sink's steady-state receive rate over --seconds after a warm-up. "cores" is the CPU
time every process of the run used per second of the window (sum over both namespaces), split into
gateway, routers, the rest of the orchestrator, and the load generator + sink. Both namespaces share
this machine's cores, so a satellite here adds no CPU: the figures show the cost of the machinery,
and the split is what gains on real boards, where the satellite brings its own cores.
Without root it prints why and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

from tests.support.netns import TwoHosts, unavailable_reason

PY = sys.executable
BUS_PORT = 7100
COMMAND_PORT = 7000
PEER = ("-m", "tests.support.multihost_peer")  # the other board's fake peripherals, run from the repository root
DATA_PORTS = "7001-7080"
SINK_PORT = 7500
READY_TIMEOUT_S = 30.0
WARMUP_S = 2.0
STOP_WAIT_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    name: str
    main_routers: int
    satellite_routers: int = 0
    tcp_bus: bool = False


SCENARIOS = (
    Scenario("1 board, 1 router", 1),
    Scenario("1 board, 2 routers", 2),
    Scenario("1 board, 4 routers", 4),
    Scenario("1 board, 2 routers, CURVE bus", 2, tcp_bus=True),
    Scenario("2 boards, 1+1 routers", 1, 1, True),
    Scenario("2 boards, 2+2 routers", 2, 2, True),
)


class Run:
    """One scenario: main instance in A, optional satellite and the peripherals in B."""

    def __init__(self, hosts: TwoHosts, scenario: Scenario, root: Path) -> None:
        self.hosts, self.scenario, self.root = hosts, scenario, root
        self.main_config = root / "main"
        self.bus = f"tcp://{hosts.a.address}:{BUS_PORT}"
        self.bus_args = ["--bus", self.bus] if scenario.tcp_bus else []

    def in_a(self, argv: list[str]) -> subprocess.CompletedProcess:
        return self.hosts.run(self.hosts.a, argv, str(REPO_ROOT))

    def status(self) -> dict[str, Any]:
        done = self.in_a([PY, "launch.py", "--config-dir", str(self.main_config), *self.bus_args, "status", "--json"])
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def command(self, *lines: str) -> str:
        done = self.in_a([PY, *PEER, "cmd", self.hosts.a.address, str(COMMAND_PORT), *lines])
        return done.stdout + done.stderr

    def peers(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "peers.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def start(self, sources: int, burst: int) -> None:
        hosts, scenario = self.hosts, self.scenario
        self.main_config.mkdir(parents=True)
        (self.main_config / "orch.cf").write_text(json.dumps({
            "command_port": COMMAND_PORT, "data_port_range": DATA_PORTS, "bind_host": hosts.a.address,
            "known_ports": str(COMMAND_PORT), "known_hosts": ["127.0.0.1"], "scan_interval": 60, "peripherals": []}))
        hosts.spawn(hosts.a, [PY, "launch.py", "--headless", "--config-dir", str(self.main_config), "--routers", str(scenario.main_routers),
                              "--only", "broker,state,gateway,router", *self.bus_args], str(self.root / "main.out"), str(REPO_ROOT))
        wait(lambda: self.status().get("supervisor", {}).get("ready"), "the main instance")
        if scenario.satellite_routers:
            keys = self.root / "sat" / "keys"
            keys.mkdir(parents=True)
            for name in ("server.key", "client.key", "client.key_secret"):
                shutil.copy2(self.main_config / "keys" / name, keys / name)
            hosts.spawn(hosts.b, [PY, "launch.py", "--headless", "--config-dir", str(self.root / "sat"), "--join", self.bus,
                                  "--only", "router", "--routers", str(scenario.satellite_routers), "--satellite-name", "sat"],
                        str(self.root / "sat.out"), str(REPO_ROOT))
            total = scenario.main_routers + scenario.satellite_routers
            wait(lambda: self.status().get("orchestrator", {}).get("Routers Alive") == total, "the satellite's routers")
        hosts.spawn(hosts.b, [PY, *PEER, "peers", hosts.a.address, str(COMMAND_PORT), "--bind", hosts.b.address,
                              "--sink-port", str(SINK_PORT), "--sources", str(sources), "--status", str(self.root / "peers.json"),
                              "--rate", "0", "--burst", str(burst), "--duration", "120", "--start-file", str(self.root / "go")], str(self.root / "peers.out"), str(REPO_ROOT))
        wait(lambda: self.peers().get("ready"), "the peripherals")
        replies = self.command("/delivery mh_sink stream", *(f"/routes add r{i} mh_src_{i} mh_sink" for i in range(sources)))
        if replies.count("added successfully") != sources:
            raise RuntimeError(f"routes not added: {replies[:500]}")
        time.sleep(1.0)  # the routers take the routes from the bus
        (self.root / "go").touch()

    def measure(self, seconds: float) -> dict[str, Any]:
        time.sleep(WARMUP_S)
        cpu0, peers0, t0 = self.cpu(), self.peers(), time.monotonic()
        time.sleep(seconds)
        cpu1, peers1, t1 = self.cpu(), self.peers(), time.monotonic()
        span = t1 - t0
        supervisor = self.status().get("supervisor", {})
        actors = supervisor.get("children", []) + supervisor.get("remote", [])
        delivered = {a["name"]: a.get("stats", {}).get("delivered", 0) for a in actors if a["name"].startswith("router")}
        asked = time.monotonic()
        answered = '"Routers Alive"' in self.command("/status")
        status_s = round(time.monotonic() - asked, 2) if answered else None
        on_satellite = sum(v for n, v in delivered.items() if "@" in n)
        cores = {group: round((cpu1.get(group, 0) - cpu0.get(group, 0)) / span, 2) for group in ("gateway", "routers", "bus+state", "load+sink")}
        return {"msgs_per_s": round((peers1.get("total", 0) - peers0.get("total", 0)) / span),
                "satellite_share": round(on_satellite / max(1, sum(delivered.values())), 2), "cores": cores,
                "out_of_order": peers1.get("out_of_order", 0), "status_under_load_s": status_s}

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every process in both namespaces, by role."""
        totals: dict[str, float] = {}
        for host in (self.hosts.a, self.hosts.b):
            for pid in host.pids():
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except (FileNotFoundError, ProcessLookupError):
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                totals[role(cmdline)] = totals.get(role(cmdline), 0.0) + seconds
        return totals

    def stop(self) -> None:
        for process in self.hosts.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.hosts.processes:
            try:
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        self.hosts.a.kill_all()
        self.hosts.b.kill_all()
        self.hosts.processes.clear()


def role(cmdline: str) -> str:
    if "actors.gateway" in cmdline:
        return "gateway"
    if "actors.router" in cmdline:
        return "routers"
    if "multihost_peer" in cmdline:
        return "load+sink"
    return "bus+state"


def wait(predicate: Any, what: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.3)


def print_table(results: list[tuple[Scenario, dict[str, Any]]]) -> None:
    base = results[0][1]["msgs_per_s"] or 1
    header = (f"{'scenario':<32} {'msgs/s':>8} {'x 1 router':>10} {'on B':>5} {'order':>5} | {'cores: gateway':>14} {'routers':>7} "
              f"{'bus+state':>9} {'load+sink':>9} | {'/status s':>9}")
    print(header)
    print("-" * len(header))
    for scenario, r in results:
        c = r["cores"]
        print(f"{scenario.name:<32} {r['msgs_per_s']:>8} {r['msgs_per_s'] / base:>10.2f} {r['satellite_share']:>5.2f} {r['out_of_order']:>5} | "
              f"{c['gateway']:>14} {c['routers']:>7} {c['bus+state']:>9} {c['load+sink']:>9} | {r['status_under_load_s']!s:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring window per scenario")
    parser.add_argument("--sources", type=int, default=16)
    parser.add_argument("--burst", type=int, default=200, help="lines per write from a source")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"multihost benchmark skipped: {reason}")
        return 0
    print(f"{os.cpu_count()} cores; {args.sources} sources -> 1 sink (stream mode) over a veth link, {args.seconds:.0f}s per scenario", flush=True)
    hosts = TwoHosts.create()
    results: list[tuple[Scenario, dict[str, Any]]] = []
    try:
        for scenario in SCENARIOS:
            root = Path(tempfile.mkdtemp(prefix="multihost-bench-"))
            run = Run(hosts, scenario, root)
            try:
                run.start(args.sources, args.burst)
                results.append((scenario, run.measure(args.seconds)))
                print(f"  {scenario.name}: {results[-1][1]['msgs_per_s']} msgs/s", flush=True)
            finally:
                run.stop()
                shutil.rmtree(root, ignore_errors=True)
    finally:
        hosts.destroy()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps([{"scenario": s.name, **r} for s, r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
