"""The command gateway: TCP listeners for the legacy text protocol, data ingress to the routers.

One asyncio loop serves the command port and every data port (hundreds of clients, no thread per connection; each
client is a ``connection.Connection`` protocol). Lines become commands (answered by ``answers.Answers`` through
``commands.Registry``; changes go to the state keeper as requests) or data (``ingress.Ingress``, sent to the routers
as ``DataBatch`` over a ROUTER socket bound on ``runtime.endpoints.data``; see ``dataplane.py``). State is read from
a replica fed by the bus. Bad input (over-long lines, invalid UTF-8, idle or excess connections) gets an error line
and never disturbs other clients. This class is the lifecycle and the wiring of those parts; it is also the Host
connections call and the CommandContext command handlers use.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Any, Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ..core.bus import BusPresence, connect_subscriber
from ..core.errors import ErrorCode, OrchestratorError
from ..core.follower import AsyncReplicaFollower
from ..core.protocol import SOURCES_SEEN_STAT, Heartbeat, Op, ProtocolError, StateUpdate, decode_as
from ..core.refusals import RefusalLog
from ..core.replica import StateReplica
from ..core.requests import AsyncRequestClient
from ..core.runner import StopFlag, run_actor
from ..core.security import start_authenticator
from ..core.settings import HEARTBEAT_INTERVAL_S, POLL_INTERVAL_MS, REQUEST_TIMEOUT_S, Runtime, tunable
from ..core.tasks import Supervised
from .admission import Admission
from .answers import Answers
from .text.handlers import build_registry
from .text.replies import error
from .connection import Connection, Limits
from .datalink import DataLink, bind_data_socket
from .dataplane import DataPlane, FlowLimits
from .ingress import Ingress, send_to_router
from .listeners import Listeners, bind_host
from .status import StatusFigures
from .taps import Taps

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = HEARTBEAT_INTERVAL_S
BEATS_TIMEOUT_S = 0.5  # /status waits this long for the supervisor's beats, then answers without them
BEATS_WARN_INTERVAL_S = 60.0
BEATS_REUSE_S = 0.5  # beats change every 1.5 s at most: one answer serves every /status within this
RETRY_S = POLL_INTERVAL_MS / 1000  # while a source waits for a router (none live, or busy): how often it is retried
COUNTERS = ("connections_total", "connections_refused", "lines_in", "bytes_in", "payloads_in", "commands",
            "unknown_source", "no_route", "bad_lines", "too_long", "idle_timeouts", "partial_lines_dropped",
            "malformed_messages", "refused_clients", "refused_admin", "auth_failures",
            "connections_refused_per_address", "handler_errors", "refused_identity")


def limits_from_config(config: dict[str, Any]) -> Limits:
    """Connection limits from orch.cf keys max_line_bytes, idle_timeout (defaults when absent or invalid)."""
    return Limits(int(tunable(config, "max_line_bytes")), float(tunable(config, "idle_timeout")))


def _unbound(_identity: bytes, _body: bytes) -> None:
    raise RuntimeError("the data socket is not bound yet")


class Gateway:
    """The command gateway actor: lifecycle and wiring of its parts; the Host and CommandContext they are given."""

    def __init__(self, runtime: Runtime, context: zmq.Context, stop: StopFlag, name: str = "gateway") -> None:
        self.runtime = runtime
        self.context = context
        self.stop = stop
        self.name = name
        self.replica = StateReplica()
        self.counters = {key: 0 for key in COUNTERS}
        self.connections: set[Connection] = set()
        self.limits = limits_from_config({})
        self.supervisor: AsyncRequestClient | None = None  # /launch, /status: asked lazily, on its control socket
        self.beats_warned_at = -BEATS_WARN_INTERVAL_S
        self.beats_asked: asyncio.Future | None = None  # the supervisor's answer, shared by /status asked meanwhile
        self.beats_asked_at = 0.0
        self.plane = DataPlane(_unbound)  # its send is the data socket's, once bound (_main)
        self.ingress = Ingress(self.replica, self.counters, self.plane.submit, self.plane.paused)
        self.plane.on_pause = self.ingress.source_paused
        self.ingest = self.ingress.ingest  # Host: bound once, no hop per payload
        refusals = RefusalLog()
        self.admission = Admission(self.counters, refusals)
        self.auth_guard = self.admission.auth_guard  # CommandContext
        self.answers = Answers(build_registry(), self, self.admission, self.counters, refusals, self.ingest,
                               lambda: self.limits.max_line_bytes)
        self.listeners = Listeners(lambda role: Connection(self, role))
        self.taps = Taps(lambda: connect_subscriber(self.actx, self.runtime.endpoints, ()), stop)
        self.figures = StatusFigures(self.replica, self._live_beats, self.stats, self.auth_guard)
        self.status = self.figures.status  # CommandContext
        # Host: what a connection calls, bound once to the part that answers it.
        self.answer, self.handler_failed = self.answers.answer, self.answers.handler_failed
        self.admit, self.release_slot = self.admission.admit, self.admission.release_slot
        self.refused_identity, self.tap = self.admission.refused_identity, self.taps.tap

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
        self.data = bind_data_socket(self.actx, endpoints)
        self.plane.send = functools.partial(send_to_router, self.data)
        self.link = DataLink(self.data, self.plane, self.counters, self.answers.run_lines)
        self.state = AsyncRequestClient(self.actx, endpoints.state_front, endpoints.keys_dir)
        # The listeners open with the first snapshot (as long as the keeper takes) and follow every config change.
        # Only the state topic (its updates and the keeper's beat): /status asks the supervisor for the other beats.
        self.follower = AsyncReplicaFollower.connect(self.actx, endpoints, (), self.state, self.name,
                                                     on_change=self._replica_changed, replica=self.replica)
        self.data_monitor = self.data.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.tasks = Supervised(self.wake)
        self.tasks.start(*self.follower.tasks(), self.link.read(), self._watch_routers())
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
        self.listeners.close()
        for conn in list(self.connections):
            conn.abort()
        await self.tasks.cancel(*self.link.commands)
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
        """Timed work: router expiry, held payloads, the drop report, a bind retry, heartbeat."""
        self.plane.expire()  # logs each router lost
        self.plane.flush()
        self._sweep_idle()
        self.ingress.report_drops()
        self.listeners.maybe_retry(self.replica.config)
        seen = self.ingress.sources_seen
        if self.heart.maybe_beat({**self.stats(), **self.follower.core.stats(), SOURCES_SEEN_STAT: list(seen)}):
            seen.clear()

    def _sleep_s(self) -> float:
        """Until the next timed job: a beat, a router's expiry, a waiting source's retry, an idle client's
        time-out, a bind retry, the drop report. Work that arrives (data, commands, events) is handled at once."""
        now = time.monotonic()
        due = [self.heart.due_in()]
        if self.ingress.drops_unreported():
            due.append(self.ingress.next_report - now)
        expiry = self.plane.next_expiry()
        if expiry is not None:
            due.append(expiry - now)
        if self.plane.waiting:
            due.append(RETRY_S)
        rebind = self.listeners.retry_due_in(now)
        if rebind is not None:
            due.append(rebind)
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

    async def _live_beats(self) -> dict[str, Heartbeat]:
        """Every live actor's last beat for /status. /status from many clients at once (or a client flooding it)
        asks the supervisor once per BEATS_REUSE_S: its loop also watches liveness and restarts, and must not be kept
        busy."""
        now = time.monotonic()
        if self.beats_asked is None or (self.beats_asked.done() and now - self.beats_asked_at >= BEATS_REUSE_S):
            self.beats_asked, self.beats_asked_at = asyncio.ensure_future(self._ask_beats()), now
        return await asyncio.shield(self.beats_asked)  # a caller that goes away does not cancel the others' answer

    async def _ask_beats(self) -> dict[str, Heartbeat]:
        """From the supervisor (it hears every beat); none when it does not answer, which /status shows as no
        actors."""
        try:
            result = await self.control(Op.CONTROL_BEATS, timeout=BEATS_TIMEOUT_S)
        except OrchestratorError as exc:
            if time.monotonic() - self.beats_warned_at >= BEATS_WARN_INTERVAL_S:
                self.beats_warned_at = time.monotonic()
                log.warning("/status without the actors' figures: %s", exc)
            return {}
        beats: dict[str, Heartbeat] = {}
        for encoded in result.get("beats", []) if isinstance(result, dict) else []:
            try:
                beat = decode_as(encoded, Heartbeat)
            except ProtocolError:
                continue
            beats[beat.actor] = beat
        return beats

    def _state_changed(self) -> None:
        self.ingress.routes_changed()
        self.limits = limits_from_config(self.replica.config)
        self.plane.limits = FlowLimits.from_config(self.replica.config)
        self.admission.configure(self.replica.config)

    async def _reconcile_listeners(self) -> None:
        """Listen on exactly the configured ports (after a config change or reset too)."""
        await self.listeners.reconcile(bind_host(self.runtime.extra, self.replica.config), self.replica.config)

    async def request(self, op: Op, **args: Any) -> Any:
        """CommandContext: one request to the state keeper."""
        return await self.state.request(op, **args)

    async def control(self, op: Op, **args: Any) -> Any:
        """CommandContext: one request to the supervisor (the /launch commands)."""
        if self.supervisor is None:
            endpoints = self.runtime.endpoints
            self.supervisor = AsyncRequestClient(self.actx, endpoints.control, endpoints.keys_dir)
        return await self.supervisor.request(op, **args)

    async def settle(self, done: Callable[[StateReplica], bool]) -> None:
        """CommandContext: wait (bounded) until our replica shows a change the keeper confirmed."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not done(self.replica) and (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self.replica_changed.wait(), left)  # set by every update applied, no polling
            except asyncio.TimeoutError:
                return

    def stats(self) -> dict[str, Any]:
        """Heartbeat stats: real counters for /status and the UI."""
        return {**self.counters, **self.plane.stats(), "connections_open": len(self.connections),
                **self.listeners.figures(), "auth_lockouts": self.auth_guard.lockouts}

    @property
    def routed_sources(self) -> set[str]:
        """Host: the incoming uuid of every route."""
        return self.ingress.routed_sources

    def _sweep_idle(self) -> None:
        """Hang up on clients silent for longer than idle_timeout (one sweep per tick, no timer per read)."""
        now, timeout = time.monotonic(), self.limits.idle_timeout_s
        for conn in [c for c in self.connections if c.idle_for(now) > timeout]:
            self.counters["idle_timeouts"] += 1
            conn.hang_up(error(f"Error: idle for {timeout:g}s; closing", ErrorCode.UNAVAILABLE))

    async def _watch_routers(self) -> None:
        """A router's connection dropped (killed, restarted): declare it dead now, not after HEARTBEAT_EXPIRY_S."""
        while True:
            event = parse_monitor_message(await self.data_monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.plane.disconnected(int(event["value"]))


def main(argv: list[str] | None = None) -> int:
    return run_actor("gateway", Gateway, argv)
