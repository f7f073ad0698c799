"""Real orchestrator instances on loopback in temporary folders, free ports, and line helpers.

Shared by the tests (their fixtures are in tests/conftest.py) and the benchmarks in bench/.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import zmq

from actors.core.protocol import Op
from actors.core.requests import RequestClient
from actors.core.settings import Runtime, parse_ports

SUPPORT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SUPPORT_DIR.parent.parent
# the original's own orch.cf and routes.cf, as it wrote them on a robot
LEGACY_DATA_DIR = SUPPORT_DIR / "data" / "legacy"

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 5.0
# Ports below this are never used by tests (the live instance's 6000 range, well-known services).
LOWEST_TEST_PORT = 20000


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_range(count: int) -> list[int]:
    """count consecutive free ports in the high range (for data_port_range)."""
    for _ in range(200):
        base = random.randrange(LOWEST_TEST_PORT, 60000 - count)
        ports = list(range(base, base + count))
        if all(_bindable(p) for p in ports):
            return ports
    raise RuntimeError(f"no {count} consecutive free ports found")


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll predicate until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def send_line(port: int, line: str | bytes, timeout: float = COMMAND_TIMEOUT_S, host: str = "127.0.0.1") -> str:
    """Send one line to a TCP port, close our write side, return everything read until the peer closes."""
    data = line if isinstance(line, bytes) else line.encode()
    return send_bytes(port, data if data.endswith(b"\n") else data + b"\n", timeout, host)


def send_lines(port: int, lines: list[str], timeout: float = COMMAND_TIMEOUT_S, source: str | None = None) -> str:
    """Several lines on one connection (from the loopback address `source`); what came back until the peer closed."""
    return send_bytes(port, "".join(line + "\n" for line in lines).encode(), timeout, source=source)


def send_bytes(port: int, data: bytes, timeout: float = COMMAND_TIMEOUT_S, host: str = "127.0.0.1",
               source: str | None = None) -> str:
    """Connect (from the loopback address `source`: another host), send, half-close; what came back until the peer
    closed."""
    source_address = (source, 0) if source else None
    with socket.create_connection((host, port), timeout=timeout, source_address=source_address) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


@dataclass
class Instance:
    """A running `launch.py --headless` in a temporary config folder."""

    config_dir: Path
    command_port: int
    data_ports: list[int]
    process: subprocess.Popen
    runtime: Runtime
    clients: list[RequestClient] = field(default_factory=list)
    context: zmq.Context = field(default_factory=zmq.Context)

    def command(self, line: str | bytes, timeout: float = COMMAND_TIMEOUT_S) -> str:
        return send_line(self.command_port, line, timeout)

    def state_client(self) -> RequestClient:
        client = RequestClient(self.context, self.runtime.endpoints.state_front)
        self.clients.append(client)
        return client

    def control(self, op: Op, **args: Any) -> Any:
        client = RequestClient(self.context, self.runtime.endpoints.control)
        try:
            return client.request(op, timeout=3.0, **args)
        finally:
            client.close()

    def status(self) -> dict[str, Any]:
        return self.control(Op.CONTROL_STATUS)

    def child_pid(self, name: str) -> int | None:
        for child in self.status()["children"]:
            if child["name"] == name:
                return child["pid"]
        return None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"launch.py exited with {self.process.returncode}; see {self.config_dir}/logs")
            try:
                status = self.status()
            except Exception:  # noqa: BLE001 - not up yet: keep waiting until the timeout
                return False
            live = [c for c in status["children"] if c["state"] != "failed"]
            return status["ready"] and all(c["state"] == "running" and c["ready"] for c in live)
        wait_until(ready, timeout, 0.1, "the orchestrator to be ready")

    def read_json(self, name: str) -> Any:
        return json.loads((self.config_dir / name).read_text())

    def stop(self) -> int | None:
        """SIGTERM the supervisor and wait; kill anything of ours still alive afterwards."""
        pids: list[int] = []
        try:
            pids = [c["pid"] for c in self.status()["children"] if c["pid"]]
        except Exception:  # noqa: BLE001 - supervisor already gone: nothing to list
            pass
        for client in self.clients:
            client.close()
        self.context.destroy(linger=0)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.process.returncode


def write_test_config(config_dir: Path, overrides: dict[str, Any] | None = None,
                      data_port_count: int = 8) -> dict[str, Any]:
    """An orch.cf on ephemeral ports, bound to loopback, scanning nothing unless told."""
    config_dir.mkdir(parents=True, exist_ok=True)
    ports = free_port_range(data_port_count + 1)
    config = {
        "known_ports": str(ports[0]),  # our own command port: skipped, so nothing foreign is probed
        "scan_interval": 1,
        "command_port": ports[0],
        "data_port_range": f"{ports[1]}-{ports[-1]}",
        "peripherals": [],
        "script_uuid": "00000000-0000-4000-8000-000000000000",
        "known_hosts": ["127.0.0.1"],
        "bind_host": "127.0.0.1",
        # tests register sources on ports they never opened (1, free_port()): probe only known_ports unless a test asks
        "probe_registered_ports": False,
    }
    config.update(overrides or {})
    (config_dir / "orch.cf").write_text(json.dumps(config, indent=4))
    return config


def start_instance(tmp_path: Path, routers: int = 1, only: list[str] | None = None,
                   config: dict[str, Any] | None = None, extra_args: tuple[str, ...] = (),
                   wait: bool = True) -> Instance:
    """Start `launch.py --headless` in tmp_path/config and wait until every child heartbeats."""
    config_dir = tmp_path / "config"
    written = write_test_config(config_dir, config)
    parse_ports(written["data_port_range"])  # a bad override fails here, before any process starts
    args = [sys.executable, str(REPO_ROOT / "launch.py"), "--headless", "--config-dir", str(config_dir),
            "--routers", str(routers), *extra_args]
    if only:
        args += ["--only", ",".join(only)]
    log = open(tmp_path / "launch.out", "ab")
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log.close()
    instance = Instance(config_dir=config_dir, command_port=written["command_port"],
                        data_ports=parse_ports(written["data_port_range"]),
                        process=process, runtime=Runtime.for_config_dir(config_dir))
    if wait:
        try:
            instance.wait_ready()
        except BaseException:
            instance.stop()
            raise
    return instance

