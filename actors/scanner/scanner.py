"""The scanner: sweeps known_ports on known_hosts for peripherals answering /info, and tracks who is alive.

Each sweep (see probe.py) probes every (host, port) pair with bounded concurrency, plus the port
each known peripheral registered, wherever it is (the registrant chose that port on its own host).
Valid answers become Op.SEEN requests to the state keeper. Peripherals the gateway saw sending
data since the last sweep (its heartbeat lists them) become one Op.ALIVE request per sweep, and a
(re-)registration counts as a sighting too. A known peripheral not seen in any of these ways for
``offline_after_sweeps`` sweeps in a row becomes Op.LOST (offline, not deleted): "online" means
seen recently. Settings are read from the replicated state before each sweep, so a changed
known_ports, known_hosts, scan_interval or scan_answer_timeout applies at the next sweep.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from ..core.bus import BusPresence, heartbeat_topic, next_boundary
from ..core.errors import NotOwner, OrchestratorError
from .probe import (CONNECT_TIMEOUT_S, InfoAnswer, Outcome, ProbeResult, Target, accepting, probe_concurrency,
                    slow_first, sweep)
from ..core.follower import AsyncReplicaFollower
from ..core.protocol import SOURCES_SEEN_STAT, Heartbeat, Message, Op, StateUpdate
from ..core.replica import StateReplica
from ..core.tasks import Supervised
from ..core.runner import StopFlag, run_actor
from ..core.settings import (HEARTBEAT_INTERVAL_S, MAX_PORT, MAX_SCAN_ANSWER_TIMEOUT_S, MIN_PORT, ConfigError,
                       Endpoints, Runtime, flag, parse_ports, tunable)
from ..core.requests import AsyncRequestClient

log = logging.getLogger(__name__)

LOCAL_HOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "*"})
WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", ""})
TCP_ENDPOINT = re.compile(r"^tcp://\[?([^\]]*)\]?:(\d+)$")
GATEWAY_ACTOR_PREFIX = "gateway"  # heartbeats from these carry the sources that sent data
SWEEP_LEAD_S = 0.1  # a sweep of refused ports takes milliseconds: done before the beat on the boundary
RESOLVE_CACHE_S = 60.0  # how long a host name's address is reused (a board that moved is found within a minute)


# ---- what to scan -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanPlan:
    """The settings one sweep uses, read from the replicated config."""

    ports: tuple[int, ...]
    hosts: tuple[str, ...]
    interval_s: float
    offline_after: int
    own_ports: frozenset[int]
    own_uuid: str
    answer_timeout_s: float
    probe_registered: bool = True  # orch.cf probe_registered_ports

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ScanPlan":
        """Raise ConfigError if known_ports or data_port_range cannot be parsed."""
        own = set(parse_ports(config["data_port_range"]))
        own.add(int(config["command_port"]))
        return cls(ports=tuple(parse_ports(config["known_ports"])),
                   hosts=tuple(config.get("known_hosts") or ["localhost"]),
                   interval_s=float(config["scan_interval"]),
                   offline_after=max(1, int(config.get("offline_after_sweeps", 3))),
                   own_ports=frozenset(own), own_uuid=str(config.get("script_uuid", "")),
                   answer_timeout_s=min(float(tunable(config, "scan_answer_timeout")), MAX_SCAN_ANSWER_TIMEOUT_S),
                   probe_registered=flag(config, "probe_registered_ports"))


def tcp_endpoint_ports(endpoints: Endpoints) -> list[tuple[str, int]]:
    """(host, port) of every bus endpoint that is tcp, so the scanner never probes the bus."""
    found = []
    for endpoint in (endpoints.events_in, endpoints.events_out, endpoints.state_front, endpoints.state_back,
                     endpoints.data, endpoints.control):
        match = TCP_ENDPOINT.match(endpoint)
        if match:
            found.append((match.group(1), int(match.group(2))))
    return found


def machine_addresses() -> frozenset[str]:
    """The addresses this machine's name resolves to (asked once: it may mean a DNS query)."""
    try:
        return frozenset(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        return frozenset()


def is_local_address(address: str, machine: frozenset[str]) -> bool:
    """True for loopback addresses and the addresses of this machine."""
    try:
        return ipaddress.ip_address(address).is_loopback or address in machine
    except ValueError:
        return False


def endpoint_on_host(endpoint_host: str, host: str, address: str, machine: frozenset[str]) -> bool:
    """Whether a bus endpoint bound at endpoint_host is reachable as (host, address)."""
    if endpoint_host in (host, address):
        return True
    if endpoint_host in WILDCARD_HOSTS or endpoint_host in LOCAL_HOST_NAMES:
        return is_local_address(address, machine)
    return False


def host_aliases(host: str, address: str, machine: frozenset[str]) -> set[str]:
    """The names a peripheral record may carry for this host (a /register may store the client's address)."""
    aliases = {host, address}
    if is_local_address(address, machine):
        aliases.update(LOCAL_HOST_NAMES)
    return aliases


async def resolve(host: str) -> tuple[str, int]:
    """The address to probe for a host name, IPv4 first (peripherals bind AF_INET sockets). An address
    given as such needs no resolver (whose thread would wake for every sweep)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return str(literal), socket.AF_INET6 if literal.version == 6 else socket.AF_INET
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host!r}")
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return sockaddr[0], family


# ---- liveness -------------------------------------------------------------------------------------
class Liveness:
    """Counts consecutive missed sweeps per peripheral; says who just became lost.

    Besides the sweep's own answers, a peripheral whose last_seen moved since the previous sweep
    by anything but this scanner's reports (a registration) counts as seen.
    """

    def __init__(self) -> None:
        self.misses: dict[str, int] = {}
        self.marks: dict[str, Any] = {}  # last_seen per uuid at the previous sweep, or as our own report set it
        self.reported: dict[str, Any] = {}  # last_seen our reports set during this sweep
        self.judged_at: float | None = None  # wall time of the previous sweep's judgement (last_seen is wall time too)

    def note_reported(self, uuid: str, last_seen: Any) -> None:
        """Our own SEEN or ALIVE set this last_seen: not a sign of anyone else having heard from it."""
        self.reported[uuid] = last_seen

    def renewed(self, peripherals: dict[str, dict[str, Any]]) -> set[str]:
        """Uuids whose last_seen moved since the previous sweep without us: (re-)registered meanwhile."""
        renewed = set()
        for uuid, record in peripherals.items():
            last_seen = record.get("last_seen")
            if uuid in self.marks:
                if last_seen != self.marks[uuid]:
                    renewed.add(uuid)
            elif isinstance(last_seen, (int, float)) and self.judged_at is not None and last_seen >= self.judged_at:
                renewed.add(uuid)  # new since the previous sweep
        return renewed

    def after_sweep(self, peripherals: dict[str, dict[str, Any]], found: set[str], scanned: set[tuple[str, int]],
                    limit: int) -> list[str]:
        """Uuids of online peripherals that missed `limit` sweeps in a row on a (host, port) that was scanned."""
        found = found | self.renewed(peripherals)
        self.marks = {uuid: self.reported.get(uuid, record.get("last_seen")) for uuid, record in peripherals.items()}
        self.reported = {}
        self.judged_at = time.time()
        lost = []
        for uuid, record in peripherals.items():
            where = (record.get("host") or "localhost", record.get("port"))
            if uuid in found or where not in scanned:
                self.misses.pop(uuid, None)  # seen, or not ours to judge (its host could not be probed)
                continue
            self.misses[uuid] = self.misses.get(uuid, 0) + 1
            if self.misses[uuid] >= limit and record.get("online"):
                lost.append(uuid)
        for uuid in set(self.misses) - set(peripherals):
            del self.misses[uuid]
        return lost


# ---- the actor ------------------------------------------------------------------------------------
@dataclass
class SweepStats:
    """Counters the heartbeat carries (shown by /status and the UI)."""

    last_scan: float | None = None
    sweep_seconds: float = 0.0
    ports_scanned: int = 0
    found: int = 0
    garbage: int = 0
    silent: int = 0
    errors: int = 0
    sweeps: int = 0
    garbage_total: int = 0
    lost_total: int = 0
    registered_probed: int = 0  # ports of known peripherals outside known_ports probed in the last sweep
    heard_by_data: int = 0  # peripherals the gateway saw sending data since the previous sweep
    refused_total: int = 0  # answers with a known uuid from another host, or another port while it is online: not moved

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Scanner:
    """Sweeps on its own schedule; talks to the state keeper only through requests."""

    def __init__(self, runtime: Runtime, context: zmq.Context, stop: StopFlag, name: str = "scanner") -> None:
        self.runtime = runtime
        self.context = context
        self.stop = stop
        self.name = name
        self.replica = StateReplica()
        self.liveness = Liveness()
        self.stats = SweepStats()
        self.garbage_ports: set[tuple[str, int]] = set()
        self.refused_moves: set[tuple[str, str, int]] = set()  # (uuid, host, port) already reported: one line each
        self.unresolved_hosts: set[str] = set()
        self.resolved: dict[str, tuple[tuple[str, int], float]] = {}  # host -> (address, family), until when
        self.last_plan: ScanPlan | None = None
        self.accepted_before: set[tuple[str, int]] = set()
        self.machine: frozenset[str] = frozenset()
        self.wake = asyncio.Event()  # the main loop: a stop or a task's end
        self.plan_moved = asyncio.Event()  # the sweeper: an update or a snapshot (a new scan_interval applies at once)
        self.data_heard: dict[str, float] = {}  # uuid -> when (monotonic) a gateway beat last listed it sending data
        self.data_reported: dict[str, float] = {}  # uuid -> the heartbeat time already reported with ALIVE
        self.previous_sweep: float | None = None  # when (monotonic) the previous sweep began

    def run(self) -> None:
        self.presence = BusPresence(self.context, self.runtime.endpoints, self.name)
        self.heart = self.presence.heart
        self.machine = machine_addresses()
        log.info("scanner started (up to %d probes at once, %.2fs connect timeout)", probe_concurrency(),
                 CONNECT_TIMEOUT_S)
        try:
            asyncio.run(self._main())
        finally:
            log.info("scanner stopped")
            self.presence.close()

    async def _main(self) -> None:
        actx = zmq.asyncio.Context()
        client = AsyncRequestClient(actx, self.runtime.endpoints.state_front, self.runtime.endpoints.keys_dir)
        # The keeper's beat comes with STATE (KEEPER_HEARTBEAT); of the others only the gateway's (data sources seen).
        follower = AsyncReplicaFollower.connect(actx, self.runtime.endpoints, [heartbeat_topic(GATEWAY_ACTOR_PREFIX)],
                                                client, self.name, on_change=self._replica_changed,
                                                on_event=self._note_data_sources, replica=self.replica)
        loop = asyncio.get_running_loop()
        self.stop.on_set(lambda: loop.call_soon_threadsafe(self.wake.set))
        tasks = Supervised(self.wake)
        tasks.start(*follower.tasks(), self._sweep_forever(client))
        try:
            while not self.stop.should_stop():
                self.heart.maybe_beat({**self.stats.as_dict(), **follower.core.stats()})
                tasks.check()  # a crashed task ends the actor (the supervisor restarts it)
                await wait_event(self.wake, self.heart.due_in())
        finally:
            await tasks.cancel()
            client.close()
            follower.close()
            actx.term()

    # ---- state replica ----
    def _replica_changed(self, _update: StateUpdate | None) -> None:
        """The follower's hook: the sweeper re-reads its plan (a new scan_interval applies at once)."""
        self.plan_moved.set()

    def _note_data_sources(self, message: Message) -> None:
        """A gateway heartbeat lists the known peripherals that sent data since its previous beat."""
        if not isinstance(message, Heartbeat) or not message.actor.startswith(GATEWAY_ACTOR_PREFIX):
            return
        sources = message.stats.get(SOURCES_SEEN_STAT)
        if isinstance(sources, list):
            known, now = self.replica.peripherals, time.monotonic()
            for uuid in sources:
                if isinstance(uuid, str) and uuid in known:
                    self.data_heard[uuid] = now

    # ---- sweeping ----
    async def _sweep_forever(self, client: AsyncRequestClient) -> None:
        """Sweep, then wait scan_interval (re-read each step, so a change applies without a restart)."""
        started = None
        while True:
            plan = self._current_plan()
            due_at = None if plan is None or started is None else next_sweep_at(started, plan.interval_s)
            if plan is None or (due_at is not None and time.monotonic() < due_at):
                # Asleep until the sweep is due, or an update arrives (a new scan_interval applies at once).
                await wait_event(self.plan_moved, None if due_at is None else due_at - time.monotonic())
                continue
            started = time.monotonic()
            await self.sweep_once(plan, client)
            self.wake.set()  # the main loop: fresh figures leave with the next beat

    def _current_plan(self) -> ScanPlan | None:
        """The plan from the replica's config, or None while there is no usable config yet."""
        if not self.replica.ready:
            return None
        try:
            plan = ScanPlan.from_config(self.replica.config)
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            if self.last_plan is not None:
                log.error("unusable scan settings (%s); keeping the previous ones", exc)
            return self.last_plan
        last = self.last_plan
        if last is None or (plan.ports, plan.hosts, plan.answer_timeout_s) != (last.ports, last.hosts,
                                                                                last.answer_timeout_s):
            log.info("scanning %d port(s) on %s every %gs (answers awaited %gs)", len(plan.ports),
                     ", ".join(plan.hosts), plan.interval_s, plan.answer_timeout_s)
        self.last_plan = plan
        return plan

    async def sweep_once(self, plan: ScanPlan, client: AsyncRequestClient) -> list[ProbeResult]:
        """One sweep: probe, report what answered, mark who stopped answering."""
        began = time.monotonic()
        targets, aliases = await self._targets(plan)
        extra, expected = await self._registered_targets(plan, targets, aliases)
        ordered = slow_first([*targets, *extra], self.accepted_before)
        results = await sweep(ordered, answer_timeout_s=plan.answer_timeout_s)
        self.accepted_before = accepting(results)
        found = self._found(results, plan, expected)
        await asyncio.gather(*(self._report_seen(client, result.target, answer) for answer, result in found.values()))
        heard = await self._report_data_seen(client, set(found), began)
        scanned = {(alias, r.target.port) for r in results if r.outcome is not Outcome.ERROR
                   for alias in aliases[r.target.host]}
        lost = self.liveness.after_sweep(self.replica.peripherals, set(found) | heard, scanned, plan.offline_after)
        self.stats.registered_probed, self.stats.heard_by_data = len(extra), len(heard)
        await asyncio.gather(*(self._report_lost(client, uuid, plan.offline_after) for uuid in lost))
        self._count(results, found, time.monotonic() - began)
        return results

    async def _targets(self, plan: ScanPlan) -> tuple[list[Target], dict[str, set[str]]]:
        """Every (host, port) to probe, without our own ports; and the names each host may carry in records."""
        targets: list[Target] = []
        aliases: dict[str, set[str]] = {}
        bus_ports = tcp_endpoint_ports(self.runtime.endpoints)
        for host in plan.hosts:
            resolved = await self._resolve(host)
            if resolved is None:
                continue
            address, family = resolved
            skip = self._own_ports(plan, host, address, bus_ports)
            targets.extend(Target(host, address, family, port) for port in plan.ports if port not in skip)
            aliases[host] = host_aliases(host, address, self.machine)
        return targets, aliases

    async def _resolve(self, host: str) -> tuple[str, int] | None:
        """The address of host, or None (said once per host until it resolves again); a name's address is
        kept RESOLVE_CACHE_S, so an idle sweep does not wake the resolver's thread each time."""
        cached = self.resolved.get(host)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            resolved = await resolve(host)
        except OSError as exc:
            if host not in self.unresolved_hosts:
                log.warning("cannot resolve host %s: %s; skipping it", host, exc)
                self.unresolved_hosts.add(host)
            return None
        self.unresolved_hosts.discard(host)
        self.resolved[host] = (resolved, time.monotonic() + RESOLVE_CACHE_S)
        return resolved

    def _own_ports(self, plan: ScanPlan, host: str, address: str, bus_ports: list[tuple[str, int]]) -> set[int]:
        """Ports never probed on this host: our command and data ports, and tcp bus endpoints bound there."""
        bus = {port for ep_host, port in bus_ports if endpoint_on_host(ep_host, host, address, self.machine)}
        return set(plan.own_ports) | bus

    async def _registered_targets(self, plan: ScanPlan, swept: list[Target], aliases: dict[str, set[str]]
                                  ) -> tuple[list[Target], dict[tuple[str, int], set[str]]]:
        """The port of every known peripheral that the sweep does not cover already, and which uuids may answer there.

        Only while the peripheral is known: its record names the port it chose on its own host. Adds the
        hosts' aliases to ``aliases``.
        """
        if not plan.probe_registered:
            return [], {}
        covered = {(alias, target.port) for target in swept for alias in aliases[target.host]}
        expected: dict[tuple[str, int], set[str]] = {}
        for uuid, record in self.replica.peripherals.items():
            host, port = record.get("host") or "localhost", record.get("port")
            usable = (isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool)
                      and MIN_PORT <= port <= MAX_PORT)
            if usable and (host, port) not in covered:
                expected.setdefault((host, port), set()).add(uuid)
        bus_ports = tcp_endpoint_ports(self.runtime.endpoints)
        targets: list[Target] = []
        for host in sorted({host for host, _ in expected}):
            resolved = await self._resolve(host)
            if resolved is None:
                continue
            address, family = resolved
            skip = self._own_ports(plan, host, address, bus_ports)
            aliases.setdefault(host, host_aliases(host, address, self.machine))
            targets.extend(Target(host, address, family, port) for where_host, port in expected
                           if where_host == host and port not in skip)
        return targets, expected

    def _found(self, results: list[ProbeResult], plan: ScanPlan, expected: dict[tuple[str, int], set[str]]
               ) -> dict[str, tuple[InfoAnswer, ProbeResult]]:
        """Valid answers by uuid (not our own); garbage is logged once per port, until that port behaves again.

        On a known peripheral's port outside the sweep, only that peripheral's answer counts: nothing is
        discovered there.
        """
        found: dict[str, tuple[InfoAnswer, ProbeResult]] = {}
        garbage: set[tuple[str, int]] = set()
        for result in results:
            answer, where = result.answer, (result.target.host, result.target.port)
            if result.outcome is Outcome.GARBAGE:
                if where not in self.garbage_ports:
                    log.warning("port %s:%d answered /info with garbage: %s", where[0], where[1], result.reason)
                garbage.add(where)
            elif answer is not None and answer.uuid != plan.own_uuid and answer.uuid not in found \
                    and answer.uuid in expected.get(where, {answer.uuid}):
                found[answer.uuid] = (answer, result)
        self.garbage_ports = garbage
        return found

    async def _report_seen(self, client: AsyncRequestClient, target: Target, answer: InfoAnswer) -> None:
        known = self.replica.peripherals.get(answer.uuid)
        try:
            record = await client.request(Op.SEEN, name=answer.name, uuid=answer.uuid, port=target.port,
                                          host=target.host, address=target.address, config=answer.config)
        except NotOwner as exc:
            self._refused_move(answer.uuid, target, exc)
            return
        except OrchestratorError as exc:
            log.warning("could not report %s at %s:%d: %s", answer.name, target.host, target.port, exc)
            return
        if isinstance(record, dict):
            self.liveness.note_reported(answer.uuid, record.get("last_seen"))
        if known is None:
            log.info("discovered %s (%s) at %s:%d", answer.name, answer.uuid[:8], target.host, target.port)
        elif not known.get("online"):
            log.info("%s is back online at %s:%d", known["name"], target.host, target.port)

    def _heard_by_data(self, began: float) -> set[str]:
        """Peripherals a gateway heartbeat listed since the previous sweep began, widened by one heartbeat interval
        (beats come once a second; sweeps may come more often). Older sightings are forgotten."""
        since = (self.previous_sweep if self.previous_sweep is not None else began) - HEARTBEAT_INTERVAL_S
        self.previous_sweep = began
        known = self.replica.peripherals
        self.data_heard = {uuid: at for uuid, at in self.data_heard.items() if at >= since and uuid in known}
        self.data_reported = {uuid: at for uuid, at in self.data_reported.items() if uuid in self.data_heard}
        return set(self.data_heard)

    async def _report_data_seen(self, client: AsyncRequestClient, found: set[str], began: float) -> set[str]:
        """Peripherals that sent data lately: one ALIVE request per sweep for the sightings not reported yet
        (at most one per peripheral and heartbeat, never per message); returns every one heard."""
        heard = self._heard_by_data(began)
        pending = sorted(uuid for uuid in heard - found if self.data_reported.get(uuid) != self.data_heard[uuid])
        if not pending:
            return heard
        self.data_reported.update((uuid, self.data_heard[uuid]) for uuid in pending)
        try:
            stamps = await client.request(Op.ALIVE, uuids=pending)
        except OrchestratorError as exc:
            log.warning("could not report %d peripheral(s) seen sending data: %s", len(pending), exc)
            return heard
        for uuid, stamp in (stamps if isinstance(stamps, dict) else {}).items():
            self.liveness.note_reported(uuid, stamp)
            record = self.replica.peripherals.get(uuid)
            if record is not None and not record.get("online"):
                log.info("%s is back online (sending data)", record["name"])
        return heard

    def _refused_move(self, uuid: str, target: Target, exc: NotOwner) -> None:
        """A process answered /info with a uuid registered elsewhere: counted each sweep, logged once per place."""
        self.stats.refused_total += 1
        where = (uuid, target.host, target.port)
        if where not in self.refused_moves:
            self.refused_moves.add(where)
            log.warning("%s", exc)

    async def _report_lost(self, client: AsyncRequestClient, uuid: str, sweeps: int) -> None:
        try:
            await client.request(Op.LOST, uuid=uuid)
        except OrchestratorError as exc:
            log.warning("could not mark %s offline: %s", uuid[:8], exc)
            return
        self.stats.lost_total += 1
        log.debug("%s missed %d sweeps: reported lost", uuid[:8], sweeps)

    def _count(self, results: list[ProbeResult], found: dict[str, Any], seconds: float) -> None:
        outcomes = [result.outcome for result in results]
        stats = self.stats
        stats.last_scan = time.time()
        stats.sweep_seconds = round(seconds, 4)
        stats.ports_scanned = len(results)
        stats.found = len(found)
        stats.garbage = outcomes.count(Outcome.GARBAGE)
        stats.silent = outcomes.count(Outcome.SILENT)
        stats.errors = outcomes.count(Outcome.ERROR)
        stats.sweeps += 1
        stats.garbage_total += stats.garbage
        log.debug("sweep %d: %d ports in %.3fs, %d found, %d garbage, %d silent", stats.sweeps, stats.ports_scanned,
                  seconds, stats.found, stats.garbage, stats.silent)


def next_sweep_at(started: float, interval_s: float) -> float:
    """Just before a multiple of the interval (at least half an interval after the last sweep): its figures then leave
    with the beat every actor sends on that boundary, one wake-up of the broker, the supervisor and the UI for all."""
    due = next_boundary(started + SWEEP_LEAD_S, interval_s) - SWEEP_LEAD_S
    return due if due - started >= interval_s / 2 else due + interval_s


async def wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Sleep until event is set (then clear it) or timeout seconds pass (None: no limit)."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    event.clear()


def main(argv: list[str] | None = None) -> int:
    return run_actor("scanner", Scanner, argv)

