"""Command-line client for a running instance: `launch.py ctl '<command>'` and the gateway part of `launch.py status`.

It reaches its own instance through the bus, never through the command port: a request over the
gateway's socket in the private run folder (or, with ``--bus``, over CurveZMQ). Whoever can open
that socket is the owner, so no token is needed and none is ever sent to a TCP port, and a
process squatting the command port (another instance, another user) hears nothing.
"""
from __future__ import annotations

import json
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from ..core.protocol import Op, ProtocolError, Reply, Request, decode_as, encode
from ..core.security import secure_client
from ..core.settings import Runtime

CTL_TIMEOUT_S = 10.0
RECV_BYTES = 65536
EXIT_UNREACHABLE = 3
EXIT_ERROR_REPLY = 1
IPC_PREFIX = "ipc://"


class Unreachable(OSError):
    """Our instance does not answer (not running, or its gateway is down)."""


def send_command(host: str, port: int, line: str, timeout: float = CTL_TIMEOUT_S) -> str:
    """Send one command line to a TCP command port, half-close, and return everything written back until it closes."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(line.rstrip("\n").encode("utf-8") + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(RECV_BYTES):
                chunks.append(chunk)
    except (ConnectionError, socket.timeout, OSError) as exc:
        raise Unreachable(f"orchestrator not reachable at {host}:{port}: {exc}") from None
    return b"".join(chunks).decode("utf-8", "replace")


def bus_command(runtime: Runtime, line: str, timeout: float = CTL_TIMEOUT_S, context: zmq.Context | None = None) -> str:
    """Run command line(s) on our own instance's gateway over the bus and return what it answers; raises Unreachable."""
    return bus_exchange(runtime, line, timeout, context)[0]


def bus_exchange(runtime: Runtime, line: str, timeout: float = CTL_TIMEOUT_S,
                 context: zmq.Context | None = None) -> tuple[str, bool]:
    """The answer to command line(s), and whether any failed (by error code, not a guess from the text).

    Raises Unreachable.

    Sent once (a command is not idempotent): the socket queues it until the gateway is there, within timeout.
    """
    endpoint = runtime.endpoints.data
    if endpoint.startswith(IPC_PREFIX) and not Path(endpoint[len(IPC_PREFIX):]).exists():
        raise Unreachable(f"orchestrator on {runtime.config_dir} is not running "
                          f"(no gateway socket in {runtime.run_dir})")
    own = context is None
    context = context or zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        secure_client(sock, endpoint, runtime.endpoints.keys_dir)
        sock.connect(endpoint)
        request = Request(op=Op.COMMAND.value, args={"line": line}, req_id=uuid.uuid4().hex)
        sock.send_multipart([b"", encode(request)])
        return _await_reply(sock, request.req_id, time.monotonic() + timeout, endpoint)
    finally:
        sock.close(linger=0)
        if own:
            context.term()


def _await_reply(sock: zmq.Socket, req_id: str, deadline: float, endpoint: str) -> tuple[str, bool]:
    while (remaining := deadline - time.monotonic()) > 0:
        if not sock.poll(int(remaining * 1000) + 1):
            continue
        frames = sock.recv_multipart()
        try:
            reply = decode_as(frames[-1], Reply)
        except ProtocolError:
            continue
        if reply.req_id == req_id:
            if not reply.ok or not isinstance(reply.result, dict):
                return f"Error: {reply.error or 'unexpected reply'}", True
            return str(reply.result.get("text", "")), bool(reply.result.get("failed"))
    raise Unreachable(f"the gateway did not answer on {endpoint}")


def run_ctl(runtime: Runtime, line: str, timeout: float = CTL_TIMEOUT_S) -> int:
    """`launch.py ctl`: print the reply; exit 0, 1 for an error reply, 3 when unreachable."""
    try:
        reply, failed = bus_exchange(runtime, line, timeout)
    except Unreachable as exc:
        print(f"{exc} (is it running? try 'python launch.py --config-dir {runtime.config_dir} status')",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    sys.stdout.write(reply)
    return EXIT_ERROR_REPLY if failed else 0


def fetch_status(runtime: Runtime, timeout: float = CTL_TIMEOUT_S) -> dict[str, Any]:
    """The gateway's /status as a dict; raises Unreachable."""
    reply = bus_command(runtime, "/status", timeout)
    try:
        return json.loads(reply)
    except json.JSONDecodeError:
        raise Unreachable(f"unexpected /status reply from {runtime.endpoints.data}: {reply[:200]!r}") from None


def format_status(status: dict[str, Any]) -> str:
    """The /status figures for people."""
    peripherals = status.get("Peripherals", {})
    gateway = status.get("Gateway", {})
    lines = [
        f"orchestrator {status.get('UUID', '?')}, up {status.get('Uptime', '?')}",
        f"  peripherals      {peripherals.get('online', 0)} online / {peripherals.get('total', 0)} known",
        f"  routes           {status.get('Routes', 0)}",
        f"  routers alive    {status.get('Routers Alive', 0)}",
        f"  messages         {status.get('Messages Routed', 0)} routed, {status.get('Messages Dropped', 0)} dropped",
        f"  gateway          {gateway.get('lines_in', 0)} lines in, "
        f"{gateway.get('unknown_source', 0)} from unknown sources, "
        f"{gateway.get('no_route', 0)} without route, {gateway.get('pending', 0)} waiting for a router",
        f"  last scan        {status.get('Last Scan', 'Never')}",
    ]
    actors = status.get("Actors") or []
    if actors:
        lines.append("  live actors      " + ", ".join(f"{a.get('name')}@{a.get('host')}" for a in actors))
    return "\n".join(lines)
