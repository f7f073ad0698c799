"""Two test "hosts" made of Linux network namespaces joined by a veth pair (root only).

The subnet 10.213.X.0/24 exists only between the two namespaces this module creates, so nothing
sent to it can leave the machine. Shared by tests/system/test_multihost.py and bench/multihost_bench.py.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Sequence

SUBNET_PREFIX = "10.213"
IP_TIMEOUT_S = 5.0
KILL_WAIT_S = 3.0


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"orch-probe-{os.getpid()}-{random.randrange(1 << 16):04x}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=IP_TIMEOUT_S)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=IP_TIMEOUT_S)


@dataclass
class Host:
    """One namespace: its name and its address on the test link."""

    netns: str
    address: str
    hostname: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv run inside this namespace, in a UTS namespace of its own so heartbeats carry our host name."""
        set_hostname = f'hostname {self.hostname} && exec "$@"'
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", set_hostname, "sh", *argv]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True,
                             timeout=IP_TIMEOUT_S).stdout
        return [int(word) for word in out.split()]

    def kill_all(self, keep: Sequence[int] = ()) -> list[int]:
        """SIGKILL every process in the namespace except `keep` (and their ancestors' shells); the killed pids."""
        killed = []
        for pid in self.pids():
            if pid in keep:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        return killed


@dataclass
class TwoHosts:
    """Namespaces A (main) and B (satellite) with addresses 10.213.X.1 and 10.213.X.2."""

    a: Host
    b: Host
    processes: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def create(cls) -> "TwoHosts":
        tag = f"{os.getpid() % 10000}{random.randrange(1 << 12):03x}"
        third = random.randrange(1, 255)
        a = Host(f"orch-a-{tag}", f"{SUBNET_PREFIX}.{third}.1", f"board-a-{tag}")
        b = Host(f"orch-b-{tag}", f"{SUBNET_PREFIX}.{third}.2", f"board-b-{tag}")
        hosts = cls(a, b)
        try:
            hosts._setup(tag)
        except BaseException:
            hosts.destroy()
            raise
        return hosts

    def _setup(self, tag: str) -> None:
        veth_a, veth_b = f"ova{tag}"[:15], f"ovb{tag}"[:15]
        for host in (self.a, self.b):
            _ip("netns", "add", host.netns)
            _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("link", "add", veth_a, "netns", self.a.netns, "type", "veth", "peer", "name", veth_b, "netns", self.b.netns)
        for host, veth in ((self.a, veth_a), (self.b, veth_b)):
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", veth)
            _ip("-n", host.netns, "link", "set", veth, "up")

    def spawn(self, host: Host, argv: Sequence[str], log_path: str, cwd: str) -> subprocess.Popen:
        """Start argv inside host's namespace, output to log_path; remembered for destroy()."""
        with open(log_path, "ab") as log:
            process = subprocess.Popen(host.command(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def run(self, host: Host, argv: Sequence[str], cwd: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """Run argv inside host's namespace to completion."""
        return subprocess.run(host.command(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def destroy(self) -> None:
        """Kill everything still running in either namespace, then delete both (the veth pair goes with them)."""
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + KILL_WAIT_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for host in (self.a, self.b):
            host.kill_all()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            try:
                process.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        for host in (self.a, self.b):
            subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True, timeout=IP_TIMEOUT_S)
