"""The gateway's side of the data plane: live routers, per-source sequencing, drain-then-switch, bounded buffers.

Pure logic around one injected ``send(identity, body)`` callable, so it runs against fakes in tests.
Each source's payloads are numbered from 1 and sent as ``DataBatch`` to one router, chosen by
rendezvous hashing over the live routers. A source moves to another router only once every
batch it sent to the old one is acknowledged (drain, then switch), or the old one died, or
draining takes longer than DRAIN_TIMEOUT_S: per-source order holds for any number of routers.
While no router can take a source's payloads they wait in a bounded per-source buffer; what
does not fit is counted as dropped. Unacknowledged batches are kept (bounded) for a later resend.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .protocol import DataBatch, encode
from .settings import HEARTBEAT_EXPIRY_S

log = logging.getLogger(__name__)

MAX_BATCH_PAYLOADS = 1000
PENDING_LIMIT_PER_SOURCE = 10_000  # payloads held per source while no router can take them
UNACKED_LIMIT_PER_SOURCE = 1000  # batches kept per source for a later resend
DRAIN_TIMEOUT_S = HEARTBEAT_EXPIRY_S


class RouterBusy(Exception):
    """The router's queue is full (high-water mark); try again later."""


class RouterGone(Exception):
    """The router's identity is not connected any more."""


def rendezvous(source: str, routers: list[bytes]) -> bytes:
    """The router with the highest hash of (source, router): stable while that router lives."""
    key = source.encode("utf-8") + b"\0"
    return max(routers, key=lambda router: hashlib.blake2b(key + router, digest_size=8).digest())


@dataclass
class SourceState:
    """Sequencing of one source: next seq to give, where it went, what came back."""

    next_seq: int = 1
    router: bytes | None = None
    sent: int = 0  # last seq sent to ``router``
    acked: int = 0  # last seq acknowledged
    drain_since: float | None = None
    pending: deque[bytes] = field(default_factory=deque)
    unacked: deque[tuple[int, int, bytes, bytes]] = field(default_factory=deque)  # (first, last, router, body)


class DataPlane:
    """Routes batches of payloads to live routers, in order per source."""

    def __init__(self, send: Callable[[bytes, bytes], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.send = send
        self.clock = clock
        self.routers: dict[bytes, float] = {}
        self.sources: dict[str, SourceState] = {}
        self.waiting: set[str] = set()
        self.counters = {"batches_sent": 0, "payloads_sent": 0, "payloads_acked": 0, "dropped_buffer_full": 0,
                         "forced_switches": 0, "unacked_evicted": 0, "router_switches": 0}

    # ---- routers ---------------------------------------------------------------------
    def heard(self, identity: bytes) -> bool:
        """A router spoke; returns True when it was not live before."""
        was_live = self._is_live(identity, self.clock())
        self.routers[identity] = self.clock()
        if not was_live:
            self.flush()
        return not was_live

    def _is_live(self, identity: bytes, now: float) -> bool:
        heard = self.routers.get(identity)
        return heard is not None and now - heard <= HEARTBEAT_EXPIRY_S

    def live(self) -> list[bytes]:
        now = self.clock()
        return sorted(r for r in self.routers if self._is_live(r, now))

    def expire(self) -> list[bytes]:
        """Forget routers not heard from within HEARTBEAT_EXPIRY_S; returns them."""
        now = self.clock()
        gone = [r for r in self.routers if not self._is_live(r, now)]
        for router in gone:
            del self.routers[router]
        return gone

    # ---- data ------------------------------------------------------------------------
    def submit(self, source: str, payloads: list[bytes]) -> None:
        """Send payloads of one source now if a router can take them, else hold them (bounded)."""
        state = self.sources.get(source)
        if state is None:
            state = self.sources[source] = SourceState()
        if state.pending:
            self._hold(source, state, payloads)
            self._flush_source(source, state)
            return
        rest = self._send(source, state, payloads)
        if rest:
            self._hold(source, state, rest)

    def ack(self, source: str, seq: int) -> None:
        """A router finished every payload of source up to seq."""
        state = self.sources.get(source)
        if state is None or seq <= state.acked:
            return
        self.counters["payloads_acked"] += seq - state.acked
        state.acked = seq
        while state.unacked and state.unacked[0][1] <= seq:
            state.unacked.popleft()
        if state.pending:
            self._flush_source(source, state)

    def flush(self) -> None:
        """Retry every held payload (a router appeared, a drain finished, a queue emptied)."""
        for source in list(self.waiting):
            self._flush_source(source, self.sources[source])

    def _flush_source(self, source: str, state: SourceState) -> None:
        while state.pending:
            chunk = [state.pending.popleft() for _ in range(min(MAX_BATCH_PAYLOADS, len(state.pending)))]
            rest = self._send(source, state, chunk)
            if rest:
                state.pending.extendleft(reversed(rest))
                return
        self.waiting.discard(source)

    def _hold(self, source: str, state: SourceState, payloads: list[bytes]) -> None:
        room = PENDING_LIMIT_PER_SOURCE - len(state.pending)
        if len(payloads) > room:
            self.counters["dropped_buffer_full"] += len(payloads) - max(room, 0)
            payloads = payloads[:max(room, 0)]
        state.pending.extend(payloads)
        if state.pending:
            self.waiting.add(source)

    def _send(self, source: str, state: SourceState, payloads: list[bytes]) -> list[bytes]:
        """Send as batches; returns the payloads that could not be sent (in order)."""
        router = self._router_for(source, state)
        if router is None:
            return payloads
        for start in range(0, len(payloads), MAX_BATCH_PAYLOADS):
            chunk = payloads[start:start + MAX_BATCH_PAYLOADS]
            body = encode(DataBatch(source=source, seq=state.next_seq, payloads=chunk, received_at=time.time()))
            try:
                self.send(router, body)
            except RouterBusy:
                return payloads[start:]
            except RouterGone:
                self.routers.pop(router, None)
                return payloads[start:]
            self._sent(state, router, chunk, body)
        return []

    def _sent(self, state: SourceState, router: bytes, chunk: list[bytes], body: bytes) -> None:
        first, last = state.next_seq, state.next_seq + len(chunk) - 1
        state.next_seq, state.sent, state.router = last + 1, last, router
        state.unacked.append((first, last, router, body))
        if len(state.unacked) > UNACKED_LIMIT_PER_SOURCE:
            state.unacked.popleft()
            self.counters["unacked_evicted"] += 1
        self.counters["batches_sent"] += 1
        self.counters["payloads_sent"] += len(chunk)

    def _router_for(self, source: str, state: SourceState) -> bytes | None:
        """The source's router: its current one until drained, then the rendezvous choice."""
        live = self.live()
        if not live:
            return None
        best = rendezvous(source, live)
        current = state.router
        if current is None or current == best:
            state.drain_since = None
            return best
        if current in live and state.acked < state.sent:
            now = self.clock()
            state.drain_since = state.drain_since or now
            if now - state.drain_since <= DRAIN_TIMEOUT_S:
                return None  # hold new payloads until the old router has acknowledged everything
            self.counters["forced_switches"] += 1
            log.warning("source %s: router %s did not acknowledge within %.0fs; switching to %s",
                        source[:8], current.decode(errors="replace"), DRAIN_TIMEOUT_S, best.decode(errors="replace"))
        state.drain_since = None
        self.counters["router_switches"] += 1
        return best

    # ---- figures ---------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        return {**self.counters, "routers_live": len(self.live()),
                "pending": sum(len(self.sources[s].pending) for s in self.waiting),
                "unacked_batches": sum(len(s.unacked) for s in self.sources.values())}
