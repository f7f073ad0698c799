"""The gateway's side of the data plane: live routers, per-source sequencing, resend, flow control.

Pure logic around one injected ``send(identity, body)`` callable, so it runs against fakes in tests.
Each source's payloads are numbered from 1 and sent as ``DataBatch`` to one router, chosen by
rendezvous hashing over the live routers.

At-least-once: every batch is kept until a router acknowledges it (routers ack once every sink
delivered it, dropped it, or parked it: a sink that is down or not keeping up never holds back
its sources, see router.py). When the router a source's batches went to dies (silent for
HEARTBEAT_EXPIRY_S, its connection dropped, its identity unreachable, or a new process took its
identity), the source's unacknowledged batches are sent again, in order, to its next router
before any newer batch. Duplicates are possible; loss and reordering are not, except for the
payloads a dead router had parked for a bad sink.

Order: a source moves to another live router only once the old one acknowledged everything
(drain, then switch), or after DRAIN_TIMEOUT_S (then its unacknowledged batches go too).

Flow control: at most ``window`` payloads/bytes per source are unacknowledged at the routers;
the rest waits in the source's pending buffer. When that buffer passes ``pause_at`` the source
is paused (the gateway stops reading its connections: TCP pushes back to the peripheral) and
resumed once it drained to half that. Only a source that still sends beyond ``pending`` (e.g. a
connection per message while no router exists at all) loses payloads, counted as dropped.
"""
from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.protocol import DataBatch, encode
from ..core.settings import HEARTBEAT_EXPIRY_S, tunable

log = logging.getLogger(__name__)

MAX_BATCH_PAYLOADS = 1000
DRAIN_TIMEOUT_S = HEARTBEAT_EXPIRY_S
PAUSE_FRACTION = 4  # a source pauses when its pending buffer holds 1/PAUSE_FRACTION of its bound
PENDING_LIMIT_PER_SOURCE = int(tunable({}, "gateway_pending_messages"))


class RouterBusy(Exception):
    """The router's queue is full (high-water mark); try again later."""


class RouterGone(Exception):
    """The router's identity is not connected any more."""


def rendezvous(source: str, routers: list[bytes]) -> bytes:
    """The router with the highest hash of (source, router): stable while that router lives."""
    key = source.encode("utf-8") + b"\0"
    # zlib, not hashlib: OpenSSL costs 4 MB per process.
    return max(routers, key=lambda router: (zlib.crc32(key + router), router))


@dataclass(frozen=True)
class FlowLimits:
    """Per-source bounds (orch.cf keys gateway_window_*, gateway_pending_*)."""

    window_messages: int
    window_bytes: int
    pending_messages: int
    pending_bytes: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FlowLimits":
        return cls(*(int(tunable(config, key)) for key in ("gateway_window_messages", "gateway_window_bytes",
                                                            "gateway_pending_messages", "gateway_pending_bytes")))

    def pause_at(self) -> tuple[int, int]:
        """Pending payloads/bytes at which a source's connections stop being read."""
        return self.pending_messages // PAUSE_FRACTION, self.pending_bytes // PAUSE_FRACTION


@dataclass(frozen=True)
class Incarnation:
    """One process behind a router identity: a restart under the same name is a new incarnation."""

    identity: bytes
    number: int


@dataclass
class RouterInfo:
    incarnation: Incarnation
    heard_at: float
    pid: int | None = None
    host: str | None = None
    fd: int | None = None
    # What its last beat said (longer on one board, where a death drops the connection).
    expiry_s: float = HEARTBEAT_EXPIRY_S


@dataclass
class Batch:
    """A sent, not yet acknowledged batch (kept whole so a resend is byte-identical)."""

    first: int
    last: int
    body: bytes
    nbytes: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass
class SourceState:
    """Sequencing of one source: next seq to give, where its batches are, what came back."""

    next_seq: int = 1
    acked: int = 0  # last seq acknowledged
    at: Incarnation | None = None  # the router incarnation unacked[:delivered] went to
    delivered: int = 0  # how many of unacked (a prefix) are at ``at``; the rest are owed to it
    drain_since: float | None = None
    paused: bool = False
    pending: deque[bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    unacked: deque[Batch] = field(default_factory=deque)
    unacked_payloads: int = 0
    unacked_bytes: int = 0


class DataPlane:
    """Routes batches of payloads to live routers, in order per source, at least once."""

    def __init__(self, send: Callable[[bytes, bytes], None], clock: Callable[[], float] = time.monotonic,
                 on_pause: Callable[[str, bool], None] | None = None, limits: FlowLimits | None = None) -> None:
        self.send = send
        self.clock = clock
        self.on_pause = on_pause
        self.limits = limits or FlowLimits.from_config({})
        self.routers: dict[bytes, RouterInfo] = {}
        self.by_fd: dict[int, bytes] = {}
        self.incarnations = 0
        self.sources: dict[str, SourceState] = {}
        self.waiting: set[str] = set()
        self.counters = {"batches_sent": 0, "payloads_sent": 0, "payloads_acked": 0, "dropped_buffer_full": 0,
                         "forced_switches": 0, "router_switches": 0, "routers_lost": 0, "routers_restarted": 0,
                         "batches_resent": 0, "payloads_resent": 0, "pause_episodes": 0, "stale_acks": 0}
        # Numbers this process's batches: an ack for a previous gateway is told apart.
        self.epoch = uuid.uuid4().hex[:12]

    # ---- routers ---------------------------------------------------------------------
    def heard(self, identity: bytes, pid: int | None = None, host: str | None = None, fd: int | None = None,
              expiry_s: float = HEARTBEAT_EXPIRY_S) -> bool:
        """A router heartbeat; returns True when it (or a new process under its name) joined just now."""
        now = self.clock()
        info = self.routers.get(identity)
        if (info is not None and self._is_live(info, now) and pid is not None and info.pid is not None
                and (pid, host) != (info.pid, info.host)):
            self.counters["routers_restarted"] += 1
            self.lost(identity, "restarted under the same name")
            info = None
        if info is not None and not self._is_live(info, now):
            self.lost(identity, f"silent for more than {info.expiry_s:.0f}s")
        elif info is not None:
            info.heard_at, info.expiry_s = now, expiry_s
            self._remember_fd(identity, info, fd)
            return False
        self.incarnations += 1
        info = self.routers[identity] = RouterInfo(Incarnation(identity, self.incarnations), now, pid, host,
                                                   expiry_s=expiry_s)
        self._remember_fd(identity, info, fd)
        self.flush()
        return True

    def alive(self, identity: bytes) -> None:
        """Any other message from a live router (an ack) also proves it alive; it never admits one."""
        info, now = self.routers.get(identity), self.clock()
        if info is not None and self._is_live(info, now):
            info.heard_at = now

    def _remember_fd(self, identity: bytes, info: RouterInfo, fd: int | None) -> None:
        if fd is None or info.fd == fd:
            return
        if info.fd is not None and self.by_fd.get(info.fd) == identity:
            del self.by_fd[info.fd]
        info.fd = fd
        self.by_fd[fd] = identity

    def disconnected(self, fd: int) -> bytes | None:
        """The connection on fd dropped: the router that spoke on it is dead (returns it)."""
        identity = self.by_fd.pop(fd, None)
        info = self.routers.get(identity) if identity is not None else None
        if info is None or info.fd != fd:
            return None
        self.lost(identity, "connection closed")
        self.flush()
        return identity

    def lost(self, identity: bytes, why: str) -> None:
        """A router is dead: forget it; what it had not acknowledged is owed to the next router of each source."""
        info = self.routers.pop(identity, None)
        if info is None:
            return
        if info.fd is not None and self.by_fd.get(info.fd) == identity:
            del self.by_fd[info.fd]
        self.counters["routers_lost"] += 1
        owed = 0
        for source, state in self.sources.items():
            if state.at == info.incarnation:
                state.at, state.delivered = None, 0
                owed += state.unacked_payloads
                if state.unacked or state.pending:
                    self.waiting.add(source)
        log.warning("router %s lost (%s); %d unacknowledged payloads will be sent again",
                    identity.decode(errors="replace"), why, owed)

    def _is_current(self, incarnation: Incarnation) -> bool:
        info = self.routers.get(incarnation.identity)
        return info is not None and info.incarnation == incarnation

    def _is_live(self, info: RouterInfo, now: float) -> bool:
        return now - info.heard_at <= info.expiry_s

    def live(self) -> list[bytes]:
        now = self.clock()
        return sorted(r for r, info in self.routers.items() if self._is_live(info, now))

    def next_expiry(self) -> float | None:
        """Clock time at which the quietest live router would be declared dead (None without routers)."""
        return min((info.heard_at + info.expiry_s for info in self.routers.values()), default=None)

    def expire(self) -> list[bytes]:
        """Declare dead the routers not heard from within their beats' expiry; returns them."""
        now = self.clock()
        gone = [r for r, info in self.routers.items() if not self._is_live(info, now)]
        for router in gone:
            self.lost(router, f"silent for more than {self.routers[router].expiry_s:.0f}s")
        if gone:
            self.flush()
        return gone

    # ---- data ------------------------------------------------------------------------
    def submit(self, source: str, payloads: list[bytes]) -> None:
        """Send payloads of one source now if its window allows, else hold them (bounded)."""
        state = self.sources.get(source)
        if state is None:
            state = self.sources[source] = SourceState()
        room = self.limits.pending_messages - len(state.pending)
        if len(payloads) > room:
            self.counters["dropped_buffer_full"] += len(payloads) - max(room, 0)
            payloads = payloads[:max(room, 0)]
        nbytes = sum(map(len, payloads))
        if state.pending_bytes + nbytes > self.limits.pending_bytes and state.pending:
            self.counters["dropped_buffer_full"] += len(payloads)
            return
        state.pending.extend(payloads)
        state.pending_bytes += nbytes
        self._pump(source, state)

    def ack(self, source: str, seq: int, epoch: str = "") -> None:
        """A router finished every payload of source up to seq (numbered by the gateway process ``epoch``)."""
        state = self.sources.get(source)
        if epoch and epoch != self.epoch:
            self.counters["stale_acks"] += 1  # meant for a previous gateway process, whose numbers restarted
            return
        if state is None or seq <= state.acked or seq >= state.next_seq:
            return  # stale, or beyond what we sent
        self.counters["payloads_acked"] += max(seq - state.acked, 0)
        state.acked = seq
        while state.unacked and state.unacked[0].last <= seq:
            batch = state.unacked.popleft()
            state.unacked_payloads -= batch.count
            state.unacked_bytes -= batch.nbytes
            state.delivered = max(state.delivered - 1, 0)
        if state.pending or state.delivered < len(state.unacked):
            self._pump(source, state)

    def flush(self) -> None:
        """Retry every source with something owed or held (a router appeared, died, or acknowledged)."""
        for source in list(self.waiting):
            self._pump(source, self.sources[source])

    def paused(self, source: str) -> bool:
        state = self.sources.get(source)
        return state is not None and state.paused

    def _pump(self, source: str, state: SourceState) -> None:
        """Send what may go now: first batches owed to the source's router, then pending payloads within the window."""
        target = self._target(source, state)
        if target is not None and self._resend(state, target):
            self._send_pending(source, state, target)
        if state.pending or state.delivered < len(state.unacked):
            self.waiting.add(source)
        else:
            self.waiting.discard(source)
        self._update_pause(source, state)

    def _resend(self, state: SourceState, target: Incarnation) -> bool:
        """Send unacked[delivered:] again, in order; False when the router cannot take them now."""
        while state.delivered < len(state.unacked):
            batch = state.unacked[state.delivered]
            if not self._transmit(target, batch.body):
                return False
            state.delivered += 1
            self.counters["batches_resent"] += 1
            self.counters["payloads_resent"] += batch.count
        return True

    def _send_pending(self, source: str, state: SourceState, target: Incarnation) -> None:
        limits = self.limits
        while state.pending:
            room = min(limits.window_messages - state.unacked_payloads, MAX_BATCH_PAYLOADS, len(state.pending))
            if room <= 0 or (state.unacked and state.unacked_bytes >= limits.window_bytes):
                return
            chunk = [state.pending.popleft() for _ in range(room)]
            body = encode(DataBatch(source=source, seq=state.next_seq, payloads=chunk, received_at=time.time(),
                                    epoch=self.epoch))
            if not self._transmit(target, body):
                state.pending.extendleft(reversed(chunk))
                return
            nbytes = sum(map(len, chunk))
            state.pending_bytes -= nbytes
            batch = Batch(state.next_seq, state.next_seq + len(chunk) - 1, body, nbytes)
            state.unacked.append(batch)
            state.delivered += 1
            state.unacked_payloads += len(chunk)
            state.unacked_bytes += nbytes
            state.next_seq = batch.last + 1
            self.counters["batches_sent"] += 1
            self.counters["payloads_sent"] += len(chunk)

    def _transmit(self, target: Incarnation, body: bytes) -> bool:
        try:
            self.send(target.identity, body)
        except RouterBusy:
            return False
        except RouterGone:
            self.lost(target.identity, "unreachable")
            return False
        return True

    def _update_pause(self, source: str, state: SourceState) -> None:
        """Pause a source whose pending buffer passed pause_at; resume it once drained to half of that."""
        messages, nbytes = self.limits.pause_at()
        if not state.paused and (len(state.pending) >= messages or state.pending_bytes >= nbytes):
            state.paused = True
            self.counters["pause_episodes"] += 1
        elif state.paused and len(state.pending) <= messages // 2 and state.pending_bytes <= nbytes // 2:
            state.paused = False
        else:
            return
        if self.on_pause is not None:
            self.on_pause(source, state.paused)

    def _target(self, source: str, state: SourceState) -> Incarnation | None:
        """The source's router: its current one while live and not drained, else the rendezvous choice."""
        live = self.live()
        current = state.at
        if current is not None and not self._is_current(current):
            state.at, state.delivered, current = None, 0, None
        if not live:
            return None
        best = self.routers[rendezvous(source, live)].incarnation
        if current is None or current == best:
            state.drain_since = None
            if current is None:
                if state.unacked or state.acked:
                    self.counters["router_switches"] += 1
                state.at = best
            return best
        if current.identity in live and state.unacked:
            now = self.clock()
            state.drain_since = state.drain_since or now
            if now - state.drain_since <= DRAIN_TIMEOUT_S:
                return current if state.delivered < len(state.unacked) else None  # finish owed batches, hold new ones
            self.counters["forced_switches"] += 1
            log.warning("source %s: router %s did not acknowledge within %.0fs; sending its batches to %s",
                        source[:8], current.identity.decode(errors="replace"), DRAIN_TIMEOUT_S,
                        best.identity.decode(errors="replace"))
        state.drain_since = None
        state.at, state.delivered = best, 0
        self.counters["router_switches"] += 1
        return best

    # ---- figures ---------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        states = self.sources.values()
        return {**self.counters, "routers_live": len(self.live()),
                "pending": sum(len(self.sources[s].pending) for s in self.waiting),
                "unacked_batches": sum(len(s.unacked) for s in states),
                "unacked_payloads": sum(s.unacked_payloads for s in states),
                "sources_paused": sum(1 for s in states if s.paused)}
