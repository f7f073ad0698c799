"""The gateway's TCP listeners: bind the configured command and data ports, retry the ones held elsewhere.

``Listeners`` is given the protocol factory a listener serves with (the gateway's connections) and the config;
it keeps the listener state (``servers``, ``failed_binds``, the retry backoff) to itself.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any, Callable

from ..core.settings import BIND_RETRY_BASE_S, BIND_RETRY_MAX_S, ConfigError, default_config, parse_ports

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
LISTENER_KEYS = ("command_port", "data_port_range", "bind_host")

ProtocolFactory = Callable[[str], asyncio.BaseProtocol]  # role ("command" or "data") -> a new connection


def bind_host(extra: dict[str, Any], config: dict[str, Any]) -> str:
    """Where to listen: the launch option (--bind-host), else the config's bind_host, else the default."""
    return extra.get("bind_host") or config.get("bind_host") or default_config()["bind_host"]


def wanted_listeners(config: dict[str, Any]) -> dict[int, str]:
    """Port -> role ("command" or "data") for the config's command port and data port range."""
    command_port = config.get("command_port")
    wanted: dict[int, str] = {}
    try:
        wanted = {port: "data" for port in parse_ports(config.get("data_port_range", ""))}
    except ConfigError as exc:
        log.error("data_port_range unusable: %s", exc)
    if isinstance(command_port, int):
        wanted[command_port] = "command"
    return wanted


def bind_failure(exc: OSError) -> str:
    """Why a port could not be bound, as the degraded status shows it ("port 6000 held by another process")."""
    if exc.errno == errno.EADDRINUSE:
        return "held by another process"
    return f"cannot be bound: {exc.strerror or exc}"


class Listeners:
    """Listen on exactly the configured ports; ports another process holds are retried with backoff."""

    def __init__(self, connection: ProtocolFactory) -> None:
        self.connection = connection
        self.servers: dict[int, tuple[str, asyncio.Server]] = {}
        self.bound_host: str | None = None
        self.failed_binds: dict[int, str] = {}  # port -> why it could not be bound; retried with backoff until it can
        self.rebind: asyncio.Task | None = None
        self.bind_retry_s = BIND_RETRY_BASE_S
        self.next_bind_retry = 0.0
        self.listener_config: tuple[Any, ...] | None = None

    async def reconcile(self, host: str, config: dict[str, Any]) -> None:
        """Listen on exactly the configured ports (after a config change or reset too)."""
        key = (host, *(repr(config.get(k)) for k in LISTENER_KEYS))
        if key == self.listener_config:
            return
        self.listener_config = key
        wanted = wanted_listeners(config)
        for port, (role, server) in list(self.servers.items()):
            if host != self.bound_host or wanted.get(port) != role:
                server.close()
                del self.servers[port]
        self.bound_host = host
        self.failed_binds = {}
        self.bind_retry_s = BIND_RETRY_BASE_S
        self.next_bind_retry = time.monotonic() + self.bind_retry_s
        for port, role in sorted(wanted.items()):
            if port not in self.servers:
                await self._listen(host, port, role)
        log.info("listening on %s: command port %s, %d data ports%s", host, config.get("command_port"),
                 sum(1 for role, _ in self.servers.values() if role == "data"),
                 f"; could not bind {len(self.failed_binds)} ports" if self.failed_binds else "")

    async def _listen(self, host: str, port: int, role: str) -> bool:
        """Open one listener; a failure is recorded (and logged once per port) for _retry_binds."""
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: self.connection(role), host, port, reuse_address=True,
                                              backlog=LISTEN_BACKLOG)
        except OSError as exc:
            if port not in self.failed_binds:
                log.error("cannot listen on %s:%d (%s port): %s; serving the other ports and retrying every %.0fs "
                          "at most", host, port, role, exc.strerror or exc, BIND_RETRY_MAX_S)
            self.failed_binds[port] = bind_failure(exc)
            return False
        self.servers[port] = (role, server)
        return True

    def retry_due_in(self, now: float) -> float | None:
        """Seconds until the next bind retry, None when every port is bound."""
        return self.next_bind_retry - now if self.failed_binds else None

    def maybe_retry(self, config: dict[str, Any]) -> None:
        """Timed work: start a retry of the failed binds once due (one at a time)."""
        if self.failed_binds and self.rebind is None and time.monotonic() >= self.next_bind_retry:
            self.rebind = asyncio.create_task(self._retry_binds(config))

    async def _retry_binds(self, config: dict[str, Any]) -> None:
        """Ports held by another process (another instance, a squatter): try again, backing off, until they are ours."""
        try:
            wanted = wanted_listeners(config)
            for port in sorted(self.failed_binds):
                role = wanted.get(port)
                if role is None or port in self.servers:
                    self.failed_binds.pop(port, None)
                elif self.bound_host is not None and await self._listen(self.bound_host, port, role):
                    self.failed_binds.pop(port, None)
                    log.info("now listening on %s:%d (%s port): the port was freed", self.bound_host, port, role)
            self.bind_retry_s = min(BIND_RETRY_MAX_S, self.bind_retry_s * 2)
            self.next_bind_retry = time.monotonic() + self.bind_retry_s
        finally:
            self.rebind = None

    def close(self) -> None:
        for _, server in self.servers.values():
            server.close()

    def figures(self) -> dict[str, Any]:
        """The heartbeat's listener figures (a degraded status names each port that could not be bound)."""
        return {"listening": len(self.servers), "bind_failures": len(self.failed_binds),
                "failed_binds": {str(port): why for port, why in self.failed_binds.items()}}
