"""A port held by another process: ctl still reaches our own instance (over the bus, no token on any port), status says
degraded naming the port, and the gateway takes the port as soon as it is free."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.ui import viewmodel as vm
from actors.supervisor.cli import bus_command
from actors.core.protocol import Op, Reply, Request, decode_as, encode
from tests.support.instances import REPO_ROOT, Instance, free_port_range, send_line, start_instance, wait_until

GATEWAY_ONLY = ["broker", "state", "gateway"]
TOKEN = "squat-me-if-you-can-0123456789"
OUR_UUID = "11111111-2222-4333-8444-000000000001"


class ForeignListener:
    """Another process's listener on our command port: accepts, and records every byte anyone sends it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.connections = 0
        self.received = b""
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1.0)
                try:
                    while chunk := conn.recv(4096):
                        self.received += chunk
                except OSError:
                    pass

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


def launch(config_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", "--config-dir", str(config_dir), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)


def degraded_naming(instance: Instance, port: int) -> dict:
    def check():
        status = instance.status()
        return status["health"] == "degraded" and f"port {port} held by another process" in status["reasons"] and status
    return wait_until(check, 15, 0.1, f"status degraded naming port {port}")


def test_a_squatted_command_port_never_gets_the_token_and_ctl_reaches_our_instance(tmp_path):
    """Old code: ctl sent '/auth <token>' to the squatter, the gateway never retried, status said ready."""
    ports = free_port_range(4)
    foreign = ForeignListener(ports[0])
    instance = None
    try:
        config = {"command_port": ports[0], "data_port_range": f"{ports[1]}-{ports[3]}", "admin_token": TOKEN,
                  "admin_clients": [], "script_uuid": OUR_UUID}
        instance = start_instance(tmp_path, only=GATEWAY_ONLY, config=config)
        degraded_naming(instance, ports[0])
        ctl = launch(instance.config_dir, "ctl", "/status")
        assert ctl.returncode == 0, ctl.stderr
        assert json.loads(ctl.stdout)["UUID"] == OUR_UUID
        reported = wait_until(lambda: (r := json.loads(launch(instance.config_dir, "ctl", "/status").stdout)).get("Health") and r, 10, 0.2,
                              "/status to carry the supervisor's health")
        assert reported["Health"] == "degraded" and f"port {ports[0]} held by another process" in reported["Degraded Because"]
        admin = launch(instance.config_dir, "ctl", "/routes", "remove", "nothing")  # admin command, loopback not admin here
        assert admin.stdout == "Route 'nothing' not found.\n", admin.stdout  # past the admin check, no /auth sent anywhere
        text = launch(instance.config_dir, "status")
        first = text.stdout.splitlines()[0]
        assert text.returncode == 0 and f"degraded: port {ports[0]} held by another process" in first, text.stdout
        assert f"orchestrator {OUR_UUID}" in text.stdout  # the gateway figures are ours too
        as_json = json.loads(launch(instance.config_dir, "status", "--json").stdout)
        assert as_json["supervisor"]["health"] == "degraded"
        assert f"port {ports[0]} held by another process" in as_json["supervisor"]["reasons"]
        assert as_json["orchestrator"]["UUID"] == OUR_UUID
        time.sleep(0.5)  # anything ctl/status sent to the port would have arrived by now
        assert foreign.received == b"" and foreign.connections == 0
        foreign.close()
        wait_until(lambda: instance.status()["health"] == "ready", 15, 0.1, "the gateway to bind the freed port")
        assert send_line(ports[0], "/help").startswith("Available commands:")
        wait_until(lambda: json.loads(launch(instance.config_dir, "ctl", "/status").stdout)["Health"] == "ready", 10, 0.2,
                   "/status saying ready once the port is ours")
        assert launch(instance.config_dir, "status").stdout.splitlines()[0].split(", ")[2].startswith("ready")
        assert TOKEN.encode() not in foreign.received
    finally:
        foreign.close()
        if instance is not None:
            instance.stop()


def test_with_another_instance_on_the_port_ctl_still_talks_to_its_own(tmp_path):
    """Old code: ctl /status (or /reset) went to whichever instance held the command port."""
    first = start_instance(tmp_path / "a", only=GATEWAY_ONLY, config={"script_uuid": "aaaaaaaa-0000-4000-8000-000000000001"})
    second = None
    try:
        second = start_instance(tmp_path / "b", only=GATEWAY_ONLY, config={"command_port": first.command_port,
                                                                       "script_uuid": "bbbbbbbb-0000-4000-8000-000000000002"})
        degraded_naming(second, first.command_port)
        ctl = launch(second.config_dir, "ctl", "/status")
        assert json.loads(ctl.stdout)["UUID"] == "bbbbbbbb-0000-4000-8000-000000000002"
        assert json.loads(launch(first.config_dir, "ctl", "/status").stdout)["UUID"] == "aaaaaaaa-0000-4000-8000-000000000001"
        first.stop()
        wait_until(lambda: second.status()["health"] == "ready", 15, 0.1, "the second instance to take the freed port")
        assert json.loads(second.command("/status"))["UUID"] == "bbbbbbbb-0000-4000-8000-000000000002"
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_the_ui_status_line_says_degraded_with_the_reason():
    now = time.monotonic()
    supervisor = vm.ActorStatus("supervisor", now, time.time() - 30, 1, {"health": "degraded", "reasons": ["state down (restart in 4.0s)"]})
    model = vm.Model(actors={"supervisor": supervisor}, connected=True, ever_connected=True)
    line = vm.overview(model, 100, 24).lines[1]
    assert line.text.startswith("degraded: state down (restart in 4.0s)") and line.style is vm.Style.ALERT
    healthy = vm.ActorStatus("supervisor", now, time.time() - 30, 1, {"health": "ready", "reasons": []})
    line = vm.overview(vm.Model(actors={"supervisor": healthy}, connected=True, ever_connected=True), 100, 24).lines[1]
    assert "degraded" not in line.text and line.style is not vm.Style.ALERT


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[Instance]:
    instance = start_instance(tmp_path_factory.mktemp("bus-commands"), only=GATEWAY_ONLY, config={"admin_clients": []})
    try:
        yield instance
    finally:
        instance.stop()


def test_bus_commands_run_blocks_refuse_tap_and_answer_a_wrong_op(gateway):
    uuid = "11111111-2222-4333-8444-000000000009"
    assert bus_command(gateway.runtime, f"/register Lamp {uuid} 40001", 5).startswith("/ack ")
    configured = bus_command(gateway.runtime, f"/config {uuid}\n{{\"colour\": \"red\"}}\nEOF", 5)  # a block, as on the port
    assert not configured.startswith(("Error", "Unknown", "Usage", "Invalid")), configured
    wait_until(lambda: "red" in json.dumps(gateway.state_client().request(Op.SNAPSHOT)), 5, message="the stored config")
    assert bus_command(gateway.runtime, "/tap Lamp", 5).startswith("Error: /tap streams")
    assert bus_command(gateway.runtime, "/help\n/routes info", 5).endswith("No routes configured.\n")
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(gateway.runtime.endpoints.data)
    try:
        sock.send_multipart([b"", encode(Request(op="reset", args={}, req_id="x1"))])
        assert sock.poll(5000)
        reply = decode_as(sock.recv_multipart()[-1], Reply)
        assert not reply.ok and "expected op 'command'" in reply.error
        sock.send_multipart([b"", b"\xc1garbage"])  # undecodable: counted, no answer, nothing breaks
        sock.send_multipart([b"", b"", b"three"])
    finally:
        sock.close(linger=0)
        context.term()
    assert bus_command(gateway.runtime, "/help", 5).startswith("Available commands:")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_any_text_through_the_bus_gets_an_answer_and_breaks_nothing(gateway, text):
    reply = bus_command(gateway.runtime, text, 5)
    assert isinstance(reply, str)
    assert bus_command(gateway.runtime, "/routes info", 5) == "No routes configured.\n"
