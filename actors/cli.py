"""Command-line client for a running instance: `launch.py ctl '<command>'` and the gateway part of `launch.py status`.

It speaks the same text protocol as any peripheral: connect to the command port (read from the
instance's orch.cf), send the line, shut the write side, read until the gateway closes.
"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from .commands import AUTH_OK
from .settings import CONFIG_FILE_NAME, Runtime, check_config, default_config

CTL_TIMEOUT_S = 10.0
RECV_BYTES = 65536
EXIT_UNREACHABLE = 3
EXIT_ERROR_REPLY = 1
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
LOOPBACK = "127.0.0.1"
ERROR_PREFIXES = ("Error", "Unknown command", "Usage:", "Invalid")


class Unreachable(OSError):
    """Nothing answers on the instance's command port."""


def read_config(config_dir: Path) -> dict[str, Any]:
    """The instance's orch.cf as the state keeper reads it (defaults if absent); Unreachable when it cannot be used."""
    path = Path(config_dir) / CONFIG_FILE_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default_config()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Unreachable(f"cannot read the command port from {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise Unreachable(f"cannot read the command port from {path}: it does not hold a JSON object")
    checked = check_config(raw)
    if checked.insecure:
        raise Unreachable(f"cannot use {path}: {next(iter(checked.insecure.values()))}")
    return checked.value


def command_address(config_dir: Path) -> tuple[str, int]:
    """(host, command_port) of the instance that owns config_dir, from its orch.cf (defaults if absent)."""
    config = read_config(config_dir)
    host = config.get("bind_host") or ""
    return (LOOPBACK if host in WILDCARD_HOSTS else host), int(config["command_port"])


def send_as_admin(host: str, port: int, line: str, token: str, timeout: float = CTL_TIMEOUT_S) -> str:
    """Send a command, first authenticating with the admin token when one is set (the owner of orch.cf may read it)."""
    if not token:
        return send_command(host, port, line, timeout)
    reply = send_command(host, port, f"/auth {token}\n{line}", timeout)
    first, _, rest = reply.partition("\n")
    return rest if first == AUTH_OK else reply


def send_command(host: str, port: int, line: str, timeout: float = CTL_TIMEOUT_S) -> str:
    """Send one command line, half-close, and return everything the gateway writes until it closes."""
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


def is_error_reply(reply: str) -> bool:
    return reply.startswith(ERROR_PREFIXES)


def run_ctl(runtime: Runtime, line: str, timeout: float = CTL_TIMEOUT_S) -> int:
    """`launch.py ctl`: print the reply; exit 0, 1 for an error reply, 3 when unreachable."""
    try:
        host, port = command_address(runtime.config_dir)
        reply = send_as_admin(host, port, line, str(read_config(runtime.config_dir).get("admin_token") or ""), timeout)
    except Unreachable as exc:
        print(f"{exc} (is it running? try 'python launch.py --config-dir {runtime.config_dir} status')", file=sys.stderr)
        return EXIT_UNREACHABLE
    sys.stdout.write(reply)
    return EXIT_ERROR_REPLY if is_error_reply(reply) else 0


def fetch_status(runtime: Runtime, timeout: float = CTL_TIMEOUT_S) -> dict[str, Any]:
    """The gateway's /status as a dict; raises Unreachable."""
    host, port = command_address(runtime.config_dir)
    reply = send_command(host, port, "/status", timeout)
    try:
        return json.loads(reply)
    except json.JSONDecodeError:
        raise Unreachable(f"unexpected /status reply from {host}:{port}: {reply[:200]!r}") from None


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
        f"  gateway          {gateway.get('lines_in', 0)} lines in, {gateway.get('unknown_source', 0)} from unknown sources, "
        f"{gateway.get('no_route', 0)} without route, {gateway.get('pending', 0)} waiting for a router",
        f"  last scan        {status.get('Last Scan', 'Never')}",
    ]
    actors = status.get("Actors") or []
    if actors:
        lines.append("  live actors      " + ", ".join(f"{a.get('name')}@{a.get('host')}" for a in actors))
    return "\n".join(lines)


def run_status(runtime: Runtime, as_json: bool = False, timeout: float = CTL_TIMEOUT_S) -> int:
    """`launch.py status` (gateway part): print the status; exit 3 when unreachable."""
    try:
        status = fetch_status(runtime, timeout)
    except Unreachable as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(status, indent=2) if as_json else format_status(status))
    return 0
