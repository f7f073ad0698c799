"""The scanner: sweeps known_ports on known_hosts for peripherals answering /info, and tracks who is alive.

Each sweep (see probe.py) probes every (host, port) pair with bounded concurrency. Valid answers
become Op.SEEN requests to the state keeper; a known peripheral that misses ``offline_after_sweeps``
sweeps in a row becomes Op.LOST (offline, not deleted). Settings are read from the replicated state
before each sweep, so a changed known_ports, known_hosts or scan_interval applies at the next sweep.
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

from .bus import ActivityHandler, Heartbeater, connect_publisher, connect_subscriber, parse_event
from .errors import NotOwner, OrchestratorError
from .probe import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S, InfoAnswer, Outcome, ProbeResult, Target, accepting, probe_concurrency, slow_first, sweep
from .protocol import Op, ProtocolError, Topic
from .replica import StateReplica
from .runner import StopFlag, run_actor
from .settings import REQUEST_TIMEOUT_S, ConfigError, Endpoints, Runtime, parse_ports
from .stateclient import AsyncStateClient

log = logging.getLogger(__name__)

SNAPSHOT_RETRY_S = 0.5
LOCAL_HOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "*"})
WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", ""})
TCP_ENDPOINT = re.compile(r"^tcp://\[?([^\]]*)\]?:(\d+)$")


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

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ScanPlan":
        """Raise ConfigError if known_ports or data_port_range cannot be parsed."""
        own = set(parse_ports(config["data_port_range"]))
        own.add(int(config["command_port"]))
        return cls(ports=tuple(parse_ports(config["known_ports"])), hosts=tuple(config.get("known_hosts") or ["localhost"]),
                   interval_s=float(config["scan_interval"]), offline_after=max(1, int(config.get("offline_after_sweeps", 3))),
                   own_ports=frozenset(own), own_uuid=str(config.get("script_uuid", "")))


def tcp_endpoint_ports(endpoints: Endpoints) -> list[tuple[str, int]]:
    """(host, port) of every bus endpoint that is tcp, so the scanner never probes the bus."""
    found = []
    for endpoint in (endpoints.events_in, endpoints.events_out, endpoints.state_front, endpoints.state_back, endpoints.data, endpoints.control):
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
    """The address to probe for a host name, IPv4 first (peripherals bind AF_INET sockets)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host!r}")
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return sockaddr[0], family


# ---- liveness -------------------------------------------------------------------------------------
class Liveness:
    """Counts consecutive missed sweeps per peripheral; says who just became lost."""

    def __init__(self) -> None:
        self.misses: dict[str, int] = {}

    def after_sweep(self, peripherals: dict[str, dict[str, Any]], found: set[str], scanned: set[tuple[str, int]], limit: int) -> list[str]:
        """Uuids of online peripherals that missed `limit` sweeps in a row on a (host, port) that was scanned."""
        lost = []
        for uuid, record in peripherals.items():
            where = (record.get("host") or "localhost", record.get("port"))
            if uuid in found or where not in scanned:
                self.misses.pop(uuid, None)  # answered, or not ours to judge (e.g. registered outside known_ports)
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
        self.last_plan: ScanPlan | None = None
        self.accepted_before: set[tuple[str, int]] = set()
        self.machine: frozenset[str] = frozenset()
        self.dropped_events = 0
        self.wake = asyncio.Event()  # the main loop: a stop or a task's end
        self.replica_moved = asyncio.Event()  # the syncer: an update or a gap
        self.plan_moved = asyncio.Event()  # the sweeper: an update or a snapshot (a new scan_interval applies at once)

    def run(self) -> None:
        self.pub = connect_publisher(self.context, self.runtime.endpoints)
        logging.getLogger().addHandler(ActivityHandler(self.name, self.pub))
        self.heart = Heartbeater(self.name, self.pub, self.runtime.endpoints)
        self.machine = machine_addresses()
        log.info("scanner started (up to %d probes at once, %.2fs connect / %.2fs answer timeouts)", probe_concurrency(), CONNECT_TIMEOUT_S, ANSWER_TIMEOUT_S)
        try:
            asyncio.run(self._main())
        finally:
            self.pub.close()
            log.info("scanner stopped")

    async def _main(self) -> None:
        actx = zmq.asyncio.Context()
        sub = connect_subscriber(actx, self.runtime.endpoints, [Topic.STATE])  # the keeper's heartbeat included (KEEPER_HEARTBEAT)
        client = AsyncStateClient(actx, self.runtime.endpoints.state_front, self.runtime.endpoints.keys_dir)
        loop = asyncio.get_running_loop()
        self.stop.on_set(lambda: loop.call_soon_threadsafe(self.wake.set))
        tasks = [asyncio.create_task(coro) for coro in (self._listen(sub), self._keep_synced(client), self._sweep_forever(client))]
        for task in tasks:
            task.add_done_callback(lambda _: self.wake.set())
        try:
            while not self.stop.should_stop():
                self.heart.maybe_beat(self.stats.as_dict())
                for task in tasks:
                    if task.done():
                        task.result()  # a crashed task ends the actor (the supervisor restarts it)
                await wait_event(self.wake, self.heart.due_in())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client.close()
            sub.close(linger=0)
            actx.term()

    # ---- state replica ----
    async def _listen(self, sub: zmq.asyncio.Socket) -> None:
        """Feed state updates into the replica; the keeper's heartbeat reveals lost trailing updates."""
        while True:
            frames = await sub.recv_multipart()
            try:
                _, message = parse_event(frames)
            except ProtocolError:
                self.dropped_events += 1
                continue
            if self.replica.feed(message) or self.replica.needs_snapshot:
                self.replica_moved.set()
                self.plan_moved.set()

    async def _keep_synced(self, client: AsyncStateClient) -> None:
        """Take a snapshot whenever the replica is out of step (at start, after a gap, after a keeper restart)."""
        complained = False
        while True:
            if self.replica.needs_snapshot:
                try:
                    self.replica.load_snapshot(await client.request(Op.SNAPSHOT, timeout=REQUEST_TIMEOUT_S))
                    self.plan_moved.set()
                    complained = False
                except OrchestratorError as exc:
                    if not complained:
                        log.warning("no state snapshot yet (%s); retrying", exc)
                        complained = True
            await wait_event(self.replica_moved, SNAPSHOT_RETRY_S if self.replica.needs_snapshot else None)

    # ---- sweeping ----
    async def _sweep_forever(self, client: AsyncStateClient) -> None:
        """Sweep, then wait scan_interval (re-read each step, so a change applies without a restart)."""
        started = None
        while True:
            plan = self._current_plan()
            if plan is None or (started is not None and time.monotonic() - started < plan.interval_s):
                # Asleep until the sweep is due, or an update arrives (a new scan_interval applies at once).
                await wait_event(self.plan_moved, None if plan is None else started + plan.interval_s - time.monotonic())
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
        if self.last_plan is None or (plan.ports, plan.hosts) != (self.last_plan.ports, self.last_plan.hosts):
            log.info("scanning %d port(s) on %s every %gs", len(plan.ports), ", ".join(plan.hosts), plan.interval_s)
        self.last_plan = plan
        return plan

    async def sweep_once(self, plan: ScanPlan, client: AsyncStateClient) -> list[ProbeResult]:
        """One sweep: probe, report what answered, mark who stopped answering."""
        began = time.monotonic()
        targets, aliases = await self._targets(plan)
        results = await sweep(slow_first(targets, self.accepted_before))
        self.accepted_before = accepting(results)
        found = self._found(results, plan)
        await asyncio.gather(*(self._report_seen(client, result.target, answer) for answer, result in found.values()))
        scanned = {(alias, r.target.port) for r in results if r.outcome is not Outcome.ERROR for alias in aliases[r.target.host]}
        lost = self.liveness.after_sweep(self.replica.peripherals, set(found), scanned, plan.offline_after)
        await asyncio.gather(*(self._report_lost(client, uuid, plan.offline_after) for uuid in lost))
        self._count(results, found, time.monotonic() - began)
        return results

    async def _targets(self, plan: ScanPlan) -> tuple[list[Target], dict[str, set[str]]]:
        """Every (host, port) to probe, without our own ports; and the names each host may carry in records."""
        targets: list[Target] = []
        aliases: dict[str, set[str]] = {}
        bus_ports = tcp_endpoint_ports(self.runtime.endpoints)
        for host in plan.hosts:
            try:
                address, family = await resolve(host)
            except OSError as exc:
                if host not in self.unresolved_hosts:
                    log.warning("cannot resolve host %s: %s; skipping it", host, exc)
                    self.unresolved_hosts.add(host)
                continue
            self.unresolved_hosts.discard(host)
            skip = set(plan.own_ports) | {port for ep_host, port in bus_ports if endpoint_on_host(ep_host, host, address, self.machine)}
            targets.extend(Target(host, address, family, port) for port in plan.ports if port not in skip)
            aliases[host] = host_aliases(host, address, self.machine)
        return targets, aliases

    def _found(self, results: list[ProbeResult], plan: ScanPlan) -> dict[str, tuple[InfoAnswer, ProbeResult]]:
        """Valid answers by uuid (not our own); garbage is logged once per port, until that port behaves again."""
        found: dict[str, tuple[InfoAnswer, ProbeResult]] = {}
        garbage: set[tuple[str, int]] = set()
        for result in results:
            answer, where = result.answer, (result.target.host, result.target.port)
            if result.outcome is Outcome.GARBAGE:
                if where not in self.garbage_ports:
                    log.warning("port %s:%d answered /info with garbage: %s", where[0], where[1], result.reason)
                garbage.add(where)
            elif answer is not None and answer.uuid != plan.own_uuid and answer.uuid not in found:
                found[answer.uuid] = (answer, result)
        self.garbage_ports = garbage
        return found

    async def _report_seen(self, client: AsyncStateClient, target: Target, answer: InfoAnswer) -> None:
        known = self.replica.peripherals.get(answer.uuid)
        try:
            await client.request(Op.SEEN, name=answer.name, uuid=answer.uuid, port=target.port, host=target.host,
                                 address=target.address, config=answer.config)
        except NotOwner as exc:
            self._refused_move(answer.uuid, target, exc)
            return
        except OrchestratorError as exc:
            log.warning("could not report %s at %s:%d: %s", answer.name, target.host, target.port, exc)
            return
        if known is None:
            log.info("discovered %s (%s) at %s:%d", answer.name, answer.uuid[:8], target.host, target.port)
        elif not known.get("online"):
            log.info("%s is back online at %s:%d", known["name"], target.host, target.port)

    def _refused_move(self, uuid: str, target: Target, exc: NotOwner) -> None:
        """A process answered /info with a uuid registered elsewhere: counted each sweep, logged once per place."""
        self.stats.refused_total += 1
        where = (uuid, target.host, target.port)
        if where not in self.refused_moves:
            self.refused_moves.add(where)
            log.warning("%s", exc)

    async def _report_lost(self, client: AsyncStateClient, uuid: str, sweeps: int) -> None:
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
        log.debug("sweep %d: %d ports in %.3fs, %d found, %d garbage, %d silent", stats.sweeps, stats.ports_scanned, seconds, stats.found, stats.garbage, stats.silent)


async def wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Sleep until event is set (then clear it) or timeout seconds pass (None: no limit)."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    event.clear()


def main(argv: list[str] | None = None) -> int:
    return run_actor("scanner", Scanner, argv)


if __name__ == "__main__":
    raise SystemExit(main())
