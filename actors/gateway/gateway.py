"""The command gateway: TCP listeners for the legacy text protocol, data ingress to the routers.

One asyncio loop serves the command port and every data port (hundreds of clients, no thread
per connection; each client is a ``connection.Connection`` protocol). Lines become commands (answered through ``commands.Registry``, changes go to
the state keeper as requests) or data (sent straight to the routers as ``DataBatch`` over a
ROUTER socket bound on ``runtime.endpoints.data``; see ``dataplane.py``). State is read from a
replica fed by the bus. Bad input (over-long lines, invalid UTF-8, idle or excess connections)
gets an error line and never disturbs other clients.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .access import AccessPolicy, AuthGuard, AuthLimits, ConnectionSlots, SlotLimits
from ..core.refusals import RefusalLog
from ..core.net import effective_address, is_this_machine
from ..core.bus import LIVENESS_TOPICS, BusPresence, beat_expiry
from .commands import BadLine, CommandLine, ConfigBlock, DataLine, LineSession, Peer, TextReply, apply_config_block, build_registry, error, failure
from .connection import Connection, Limits
from .dataplane import DataPlane, FlowLimits
from .ingress import ACTIVITY_REPORT_INTERVAL_S, Ingress
from .listeners import Listeners
from .status import StatusFigures
from .taps import Taps
from ..core.errors import ErrorCode, OrchestratorError
from ..core.follower import AsyncReplicaFollower
from ..core.protocol import (SOURCES_SEEN_STAT, DataAck, Heartbeat, Message, Op, ProtocolError, Request, StateUpdate, decode,
                             encode)
from ..core.protocol import Reply as BusReply
from ..core.replica import StateReplica
from ..core.runner import StopFlag, run_actor
from ..core.tasks import Supervised
from ..core.security import secure_server, start_authenticator
from ..core.settings import (BIND_RETRY_BASE_S, HEARTBEAT_INTERVAL_S, POLL_INTERVAL_MS, REQUEST_TIMEOUT_S, Runtime,
                             tunable)
from ..core.requests import AsyncRequestClient

log = logging.getLogger(__name__)

DATA_HWM = 100_000
SETTLE_TIMEOUT_S = HEARTBEAT_INTERVAL_S
RETRY_S = POLL_INTERVAL_MS / 1000  # while a source waits for a router (none live, or busy): how often it is retried
BUS_COMMAND_HOST = "127.0.0.1"  # who a bus command (launch.py ctl, the UI) is from when its transport has no address (ipc)
TAP_OVER_BUS = "Error: /tap streams live payloads on a TCP connection to the command port; it cannot run through launch.py ctl"


def limits_from_config(config: dict[str, Any]) -> Limits:
    """Connection limits from orch.cf keys max_line_bytes, idle_timeout (defaults when absent or invalid)."""
    return Limits(int(tunable(config, "max_line_bytes")), float(tunable(config, "idle_timeout")))


class Gateway(Listeners, Ingress, Taps, StatusFigures):
    """The command gateway actor; also the CommandContext its command handlers use."""

    def __init__(self, runtime: Runtime, context: zmq.Context, stop: StopFlag, name: str = "gateway") -> None:
        self.runtime = runtime
        self.context = context
        self.stop = stop
        self.name = name
        self.replica = StateReplica()
        self.registry = build_registry()
        self.plane = DataPlane(self._send_to_router, on_pause=self._source_paused)
        self.held: dict[str, set[Connection]] = {}  # paused source -> connections not read meanwhile
        self.servers: dict[int, tuple[str, asyncio.Server]] = {}
        self.bound_host: str | None = None
        self.failed_binds: dict[int, str] = {}  # port -> why it could not be bound; retried with backoff until it can
        self.rebind: asyncio.Task | None = None
        self.bind_retry_s = BIND_RETRY_BASE_S
        self.next_bind_retry = 0.0
        self.listener_config: tuple[Any, ...] | None = None
        self.routed_sources: set[str] = set()
        self.heartbeats: dict[str, Heartbeat] = {}
        self.heard_at: dict[str, float] = {}
        self.connections: set[Connection] = set()
        self.limits = limits_from_config({})
        self.slots = ConnectionSlots()
        self.slot_limits = SlotLimits.from_config({})
        self.auth_guard = AuthGuard()
        self.outbox: dict[str, list[bytes]] = {}
        self.sources_seen: set[str] = set()  # known peripherals that sent data since the last heartbeat (the scanner's liveness)
        self.supervisor: AsyncRequestClient | None = None  # /launch: asked lazily, on the supervisor's control socket
        self.bus_commands: set[asyncio.Task] = set()  # commands from launch.py ctl / the UI, answered over the data socket
        self.started_at = time.time()
        self.counters = {"connections_total": 0, "connections_refused": 0, "lines_in": 0, "bytes_in": 0, "payloads_in": 0,
                         "commands": 0, "unknown_source": 0, "no_route": 0, "bad_lines": 0, "too_long": 0, "idle_timeouts": 0,
                         "partial_lines_dropped": 0, "malformed_messages": 0, "refused_clients": 0, "refused_admin": 0, "auth_failures": 0,
                         "connections_refused_per_address": 0, "handler_errors": 0,
                         "refused_identity": 0}
        self.access = AccessPolicy.from_config({})
        self.refusals = RefusalLog()
        self.reported = {"unknown_source": 0, "no_route": 0}
        self.recent_sources: dict[str, set[str]] = {"unknown_source": set(), "no_route": set()}
        self.next_report = time.monotonic() + ACTIVITY_REPORT_INTERVAL_S

    # ---- lifecycle -------------------------------------------------------------------
    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.actx = zmq.asyncio.Context()
        self.presence = BusPresence(self.context, self.runtime.endpoints, self.name)
        self.heart = self.presence.heart
        self.wake = asyncio.Event()
        self.replica_changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.stop.on_set(lambda: loop.call_soon_threadsafe(self.wake.set))
        endpoints = self.runtime.endpoints
        self.auth = start_authenticator(zmq.Context.shadow(self.actx.underlying), [endpoints.data], endpoints.keys_dir)
        self.data = self._bind_data_socket()
        self.state = AsyncRequestClient(self.actx, endpoints.state_front, endpoints.keys_dir)
        # The listeners open with the first snapshot (as long as the keeper takes) and follow every config change.
        self.follower = AsyncReplicaFollower.connect(self.actx, endpoints, LIVENESS_TOPICS, self.state, self.name,
                                                     on_change=self._replica_changed, on_event=self._heard,
                                                     replica=self.replica)
        self.data_monitor = self.data.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.tasks = Supervised(self.wake)
        self.tasks.start(*self.follower.tasks(), self._read_data(), self._watch_routers())
        log.info("gateway %s started (pid %d)", self.name, os.getpid())
        try:
            await self._startup()
            while not self.stop.should_stop():
                self.tasks.check()  # a dead reader ends the gateway: the supervisor restarts it
                try:
                    await asyncio.wait_for(self.wake.wait(), self._sleep_s())
                except asyncio.TimeoutError:
                    pass
                self.wake.clear()
                self._tick()
        finally:
            await self._shutdown()

    def _bind_data_socket(self) -> zmq.asyncio.Socket:
        sock = self.actx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted router takes its name over at once
        sock.setsockopt(zmq.SNDHWM, DATA_HWM)
        sock.setsockopt(zmq.RCVHWM, DATA_HWM)
        secure_server(sock, self.runtime.endpoints.data, self.runtime.endpoints.keys_dir)
        sock.bind(self.runtime.endpoints.data)
        log.info("gateway data plane bound on %s", self.runtime.endpoints.data)
        return sock

    async def _startup(self) -> None:
        """Until the first snapshot is taken and the listeners are open (as long as the keeper takes): our first
        beat tells the supervisor we serve, so it waits for them, but for one beat per REQUEST_TIMEOUT_S while the
        keeper is away."""
        beat_at = time.monotonic() + REQUEST_TIMEOUT_S
        while not self.stop.should_stop() and not self.follower.first.is_set():
            self.tasks.check()
            try:
                await asyncio.wait_for(self.wake.wait(), max(0.0, beat_at - time.monotonic()))
            except asyncio.TimeoutError:
                beat_at = time.monotonic() + REQUEST_TIMEOUT_S
                self.heart.maybe_beat(self.stats())
            self.wake.clear()

    async def _shutdown(self) -> None:
        for _, server in self.servers.values():
            server.close()
        for conn in list(self.connections):
            conn.abort()
        await self.tasks.cancel(*self.bus_commands)
        self.state.close()
        if self.supervisor is not None:
            self.supervisor.close()
        self.data.disable_monitor()
        self.follower.close()
        for sock in (self.data_monitor, self.data):
            sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.actx.destroy(linger=0)
        log.info("gateway stopped")
        self.presence.close()

    def _tick(self) -> None:
        """Timed work: router expiry, held payloads, the drop report, heartbeat."""
        self.plane.expire()  # logs each router lost
        self.plane.flush()
        self._sweep_idle()
        self._report_drops()
        if self.failed_binds and self.rebind is None and time.monotonic() >= self.next_bind_retry:
            self.rebind = asyncio.create_task(self._retry_binds())
        stats = {**self.stats(), **self.follower.core.stats(), SOURCES_SEEN_STAT: list(self.sources_seen)}
        if self.heart.maybe_beat(stats):
            self.sources_seen.clear()

    def _sleep_s(self) -> float:
        """Until the next timed job: a beat, a router's expiry, a waiting source's retry, an idle client's
        time-out, a bind retry, the drop report. Work that arrives (data, commands, events) is handled at once."""
        now = time.monotonic()
        due = [self.heart.due_in(), self.next_report - now]
        expiry = self.plane.next_expiry()
        if expiry is not None:
            due.append(expiry - now)
        if self.plane.waiting:
            due.append(RETRY_S)
        if self.failed_binds:
            due.append(self.next_bind_retry - now)
        if self.connections:
            timeout = self.limits.idle_timeout_s
            due.append(min(timeout - conn.idle_for(now) for conn in self.connections))
        return max(0.0, min(due))

    # ---- state -----------------------------------------------------------------------
    async def _replica_changed(self, update: StateUpdate | None) -> None:
        """The follower's hook: new tables. The listeners follow a snapshot, a config change or a reset; then
        whoever settles on the replica is woken."""
        self._state_changed()
        if update is None or update.kind in ("config", "reset"):
            await self._reconcile_listeners()
        if update is None:
            self.wake.set()  # the first one ends the start-up wait
        self.replica_changed.set()
        self.replica_changed = asyncio.Event()

    def _heard(self, beat: Message) -> None:
        """The follower's event hook: every actor's heartbeat, for /status (the keeper's also checked the replica)."""
        if isinstance(beat, Heartbeat):
            self.heartbeats[beat.actor] = beat
            self.heard_at[beat.actor] = time.monotonic()

    def _state_changed(self) -> None:
        self.routed_sources = {route["incoming"] for route in self.replica.routes.values()}
        self.limits = limits_from_config(self.replica.config)
        self.plane.limits = FlowLimits.from_config(self.replica.config)
        self.access = AccessPolicy.from_config(self.replica.config)
        self.slot_limits = SlotLimits.from_config(self.replica.config)
        self.auth_guard.limits = AuthLimits.from_config(self.replica.config)

    async def request(self, op: Op, **args: Any) -> Any:
        """CommandContext: one request to the state keeper."""
        return await self.state.request(op, **args)

    async def control(self, op: Op, **args: Any) -> Any:
        """CommandContext: one request to the supervisor (the /launch commands)."""
        if self.supervisor is None:
            self.supervisor = AsyncRequestClient(self.actx, self.runtime.endpoints.control, self.runtime.endpoints.keys_dir)
        return await self.supervisor.request(op, **args)

    async def settle(self, done: Callable[[StateReplica], bool]) -> None:
        """CommandContext: wait (bounded) until our replica shows a change the keeper confirmed."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not done(self.replica) and (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self.replica_changed.wait(), left)  # set by every update applied, no polling
            except asyncio.TimeoutError:
                return

    # ---- connections -----------------------------------------------------------------
    def _sweep_idle(self) -> None:
        """Hang up on clients silent for longer than idle_timeout (one sweep per tick, no timer per read)."""
        now, timeout = time.monotonic(), self.limits.idle_timeout_s
        for conn in [c for c in self.connections if c.idle_for(now) > timeout]:
            self.counters["idle_timeouts"] += 1
            conn.hang_up(error(f"Error: idle for {timeout:g}s; closing", ErrorCode.UNAVAILABLE))

    async def answer(self, item: CommandLine | ConfigBlock, peer: Peer) -> TextReply:
        """Host: the reply to one command line or /config block."""
        self.counters["commands"] += 1
        try:
            if isinstance(item, ConfigBlock):
                reply = await apply_config_block(item, self, peer)
            else:
                reply = await self.registry.dispatch(item.text, self, peer)
        except OrchestratorError as exc:
            return failure(exc)
        except Exception as exc:  # noqa: BLE001 - the one catch-all of the command path: input nobody foresaw costs one error line
            return self.handler_failed(exc, peer)
        if reply.code == ErrorCode.NOT_OWNER:
            self.refused_identity(peer.host, reply.text)
        elif reply.code == ErrorCode.FORBIDDEN:
            self._refused_command(item, peer)
        return reply

    # ---- access ----------------------------------------------------------------------
    def admit(self, peer_host: str, peer_port: int, local_host: str) -> tuple[Peer, TextReply | None]:
        """Host: the client with its admin right, and a refusal when allowed_clients excludes it."""
        address = effective_address(peer_host, local_host)
        peer = Peer(peer_host, peer_port, admin=self.access.is_admin(address), local_host=local_host)
        if not self.access.may_connect(address):
            self.counters["refused_clients"] += 1
            self._report_refusal(peer_host, "connect", "connection refused: not in allowed_clients")
            return peer, error(f"Error: connections not allowed from {peer_host}; closing", ErrorCode.FORBIDDEN, close=True)
        trusted = peer.admin or is_this_machine(address)  # may use the admin reserve, no per-address cap
        refusal = self.slots.claim(peer_host, trusted, self.slot_limits)  # keyed by the raw peer address: no parse per connection
        if refusal is None:
            return peer, None
        self.counters["connections_refused"] += 1
        self.counters["connections_refused_per_address"] += refusal.per_address
        self._report_refusal(peer_host, "slots", f"connection refused: {refusal.text.removeprefix('Error: ').split(';')[0]}")
        return peer, error(refusal.text, ErrorCode.UNAVAILABLE, close=True)

    def release_slot(self, peer: Peer) -> None:
        """Host: a client admitted earlier is gone."""
        self.slots.release(peer.host)

    def handler_failed(self, exc: Exception, peer: Peer) -> TextReply:
        """Host: a handler raised what nobody foresaw (a bug, or input deeper or bigger than a library takes)."""
        self.counters["handler_errors"] += 1
        reason = type(exc).__name__
        quiet = self.refusals.should_report(peer.host, f"error:{reason}")
        log.debug("a command from %s failed", peer.host, exc_info=exc)  # the traceback, for whoever debugs with --log-level DEBUG
        if quiet is not None:
            log.error("a command from %s failed with %s: %s; answered with an error%s", peer.host, reason, str(exc)[:200],
                      f" ({quiet} more since the last report)" if quiet else "")
        return error(f"Error: command failed ({reason}); it was not applied", ErrorCode.INTERNAL)

    def _refused_command(self, item: CommandLine, peer: Peer) -> None:
        """Count and report (rate-limited) an admin command or /auth refused; never the line itself (it may hold the token)."""
        command, _ = self.registry.find(item.text.split())
        if command is not None and command.words == ("/auth",):
            self.counters["auth_failures"] += 1
            self._report_refusal(peer.host, "auth", "/auth refused (wrong token or auth off)")
        else:
            self.counters["refused_admin"] += 1
            words = " ".join(command.words) if command is not None else "?"
            self._report_refusal(peer.host, "admin", f"admin command {words} refused: not in admin_clients and no /auth")

    def refused_identity(self, host: str, text: str) -> None:
        """Host: a client acted for a peripheral another host registered (counted; logged at most once a minute per address)."""
        self.counters["refused_identity"] += 1
        self._report_refusal(host, "identity", text.removeprefix("Error: "))

    def _report_refusal(self, host: str, reason: str, text: str) -> None:
        quiet = self.refusals.should_report(host, reason)
        if quiet is not None:
            log.warning("%s from %s%s", text, host, f" ({quiet} more since the last report)" if quiet else "")

    # ---- the data socket's readers --------------------------------------------------
    async def _watch_routers(self) -> None:
        """A router's connection dropped (killed, restarted): declare it dead now, not after HEARTBEAT_EXPIRY_S."""
        while True:
            event = parse_monitor_message(await self.data_monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.plane.disconnected(int(event["value"]))

    async def _read_data(self) -> None:
        while True:
            frames = await self.data.recv_multipart(copy=False)
            if len(frames) != 2:
                if len(frames) == 3 and not frames[1].bytes:  # [identity, b"", Request]: a command client, never a router
                    self._bus_command(frames[0].bytes, frames[2])
                else:
                    self.counters["malformed_messages"] += 1
                continue
            identity, body = frames[0].bytes, frames[1].bytes
            try:
                message = decode(body)
            except ProtocolError:
                self.counters["malformed_messages"] += 1
                continue
            if isinstance(message, Heartbeat):
                if self.plane.heard(identity, message.pid, message.host, frames[1].get(zmq.SRCFD), beat_expiry(message)):
                    log.info("router %s (pid %d) joined the data plane", identity.decode(errors="replace"), message.pid)
            elif isinstance(message, DataAck):
                self.plane.alive(identity)
                self.plane.ack(message.source, message.seq, message.epoch)
            else:
                self.counters["malformed_messages"] += 1

    # ---- commands over the bus (launch.py ctl/status, the UI's command line) --------
    def _bus_command(self, identity: bytes, frame: zmq.Frame) -> None:
        """Whoever reaches our bus socket is the owner (0700 run folder, or CurveZMQ keys): commands run as admin, no token."""
        try:
            request = decode(frame.bytes)
        except ProtocolError:
            request = None
        if not isinstance(request, Request):
            self.counters["malformed_messages"] += 1
            return
        if request.op != Op.COMMAND.value or not isinstance(request.args.get("line"), str):
            self.counters["malformed_messages"] += 1
            self._reply_bus(identity, BusReply(ok=False, error=f"expected op {Op.COMMAND.value!r} with a text 'line'",
                                               code=int(ErrorCode.BAD_ARGUMENTS), req_id=request.req_id))
            return
        try:
            host = frame.get("Peer-Address") or BUS_COMMAND_HOST
        except zmq.ZMQError:
            host = BUS_COMMAND_HOST
        task = asyncio.create_task(self._answer_bus_command(identity, request, Peer(host, 0, admin=True)))
        self.bus_commands.add(task)
        task.add_done_callback(self.bus_commands.discard)

    async def _answer_bus_command(self, identity: bytes, request: Request, peer: Peer) -> None:
        text, failed = await self.run_lines(request.args["line"], peer)
        self._reply_bus(identity, BusReply(ok=True, result={"text": text, "failed": failed}, req_id=request.req_id))

    def _reply_bus(self, identity: bytes, reply: BusReply) -> None:
        """Answer a command client without ever blocking; one that left is simply gone."""
        future = self.data.send_multipart([identity, b"", encode(reply)], flags=zmq.NOBLOCK)
        if future.exception() is not None:
            log.debug("a command client left before its reply: %s", future.exception())

    async def run_lines(self, text: str, peer: Peer) -> tuple[str, bool]:
        """What the command port would write back for these lines (commands, /config blocks), minus streaming;
        and whether any of them failed (a reply with an error code: launch.py ctl exits 1 on it)."""
        session = LineSession(data_port=False, max_config_bytes=self.limits.max_line_bytes)
        out: list[bytes] = []
        failed = False
        for raw in text.encode("utf-8", "replace").split(b"\n"):
            item = session.feed(raw)
            if item is None:
                continue
            if isinstance(item, DataLine):
                self.ingest(item.source, [item.payload])
                continue
            reply = item.reply if isinstance(item, BadLine) else await self.answer(item, peer)
            if reply.tap is not None:
                reply = error(TAP_OVER_BUS)
            out.append(reply.wire())
            failed = failed or reply.code != 0
            if reply.close:
                break
        return b"".join(out).decode("utf-8", "replace"), failed


def main(argv: list[str] | None = None) -> int:
    return run_actor("gateway", Gateway, argv)

