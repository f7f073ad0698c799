"""A bus served on loopback tcp (`launch.py --bus tcp://127.0.0.1:PORT`) is not open to other local users.

Any process on the machine can connect to a loopback port, so a client without the instance's
CurveZMQ keys must get nothing: no control command answered, no event heard. The supervisor's
own client (launch.py status, keys from <config>/keys) keeps working.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from actors.core.bus import connect_subscriber
from actors.core.protocol import Op, Request, encode
from actors.core.settings import Endpoints
from tests.support.instances import REPO_ROOT, free_port_range, wait_until, write_test_config

BUS_PORTS = 6
READY_TIMEOUT_S = 20.0
SILENCE_S = 3.0  # two tcp heartbeat intervals: a keyless subscriber would have heard a beat by now


def status(config_dir: Path, bus: str) -> dict | None:
    done = subprocess.run([sys.executable, "launch.py", "--config-dir", str(config_dir), "--bus", bus, "status", "--json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=15)
    if done.returncode != 0:
        return None
    reply = json.loads(done.stdout)
    return reply if reply.get("supervisor", {}).get("ready") else None


def plain_socket(context: zmq.Context, kind: int, endpoint: str) -> zmq.Socket:
    """A socket with no CurveZMQ keys at all (a SUB one subscribed to everything)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


@pytest.fixture
def tcp_instance(tmp_path: Path):
    config_dir = tmp_path / "config"
    write_test_config(config_dir)
    base = free_port_range(BUS_PORTS)[0]
    bus = f"tcp://127.0.0.1:{base}"
    log = open(tmp_path / "launch.out", "ab")
    process = subprocess.Popen([sys.executable, "launch.py", "--headless", "--config-dir", str(config_dir), "--bus", bus,
                                "--only", "broker,state,gateway"], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: status(config_dir, bus), READY_TIMEOUT_S, 0.3, "the tcp-bus instance to be ready")
        yield Endpoints.tcp("127.0.0.1", base, str(config_dir / "keys"))
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_a_keyless_local_client_gets_no_control_answer_and_hears_no_event(tcp_instance: Endpoints) -> None:
    context = zmq.Context()
    try:
        stranger = plain_socket(context, zmq.DEALER, tcp_instance.control)  # no keys, as another user's process
        stranger.send_multipart([b"", encode(Request(op=Op.CONTROL_STATUS.value, args={}, req_id="stranger"))])
        assert not stranger.poll(int(SILENCE_S / 2 * 1000)), "a client without the keys got a control answer"
        stranger.close()
        eavesdropper = plain_socket(context, zmq.SUB, tcp_instance.events_out)
        member = connect_subscriber(context, tcp_instance, [b""])
        try:
            deadline = time.monotonic() + SILENCE_S
            heard_by_member = False
            while time.monotonic() < deadline:
                assert not eavesdropper.poll(0), "a client without the keys heard the bus"
                heard_by_member = heard_by_member or bool(member.poll(100))
            assert heard_by_member, "the instance's own keys should hear its heartbeats (else this test proves nothing)"
        finally:
            eavesdropper.close()
            member.close()
    finally:
        context.destroy(linger=0)
