"""One TCP client of the gateway, as an asyncio Protocol: lines in, replies out, in order.

Data lines are handled at once inside ``data_received`` (no task, no await: the fast path for
peripherals that open a connection per message). The first line that needs an answer (a
command, a /config block) starts a worker task, and every later line of this connection waits
behind it, so replies and data keep the client's order. On the client's EOF we finish every line
it sent, then close. When we hang up ourselves (bad input, /exit, idle) we half-close and
discard what still arrives for a moment, so a reset does not destroy our last line.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Protocol

from .text.registry import Peer
from .text.replies import TextReply, error
from .text.session import BadLine, CommandLine, ConfigBlock, DataLine, Item, LineSession
from ..core.errors import ErrorCode
from ..core.replica import StateReplica
from ..core.net import LOCAL_HOST, canonical_host, same_host

log = logging.getLogger(__name__)

# Who may send as a uuid only a route knows: the route's ports are on this machine, as a record without a host.
ROUTE_ONLY_SOURCE: Mapping[str, Any] = MappingProxyType({"host": LOCAL_HOST})
LINGER_S = 1.0  # how long we keep reading (and discarding) after our last line
LINGER_MAX_BYTES = 16 * 1024 * 1024
QUEUE_PAUSE_LINES = 1000  # stop reading while this many lines wait behind a command
QUEUE_RESUME_LINES = QUEUE_PAUSE_LINES // 2
READ_CHUNK_BYTES = 32 * 1024  # per read: keeps commands answered quickly while data floods in
# Why reading is paused; reading resumes only when no reason is left.
HOLD_QUEUE = "queue"  # lines wait behind a command
HOLD_WRITE = "write"  # the client does not read its replies
HOLD_BACKPRESSURE = "backpressure"  # the routers are behind on a source this client sends (dataplane.py)


@dataclass(frozen=True)
class Limits:
    """Per-connection limits (orch.cf keys max_line_bytes, idle_timeout)."""

    max_line_bytes: int
    idle_timeout_s: float


class Host(Protocol):
    """What a connection needs from the gateway."""

    counters: dict[str, int]
    connections: set["Connection"]
    limits: Limits
    replica: StateReplica
    routed_sources: set[str]  # the incoming uuid of every route, a known peripheral or not

    def refused_identity(self, host: str, text: str) -> None:
        """Count and report (rate-limited) a client acting for a peripheral another host registered."""

    def ingest(self, source: str, payloads: list[bytes], conn: "Connection | None" = None) -> None: ...

    async def answer(self, item: CommandLine | ConfigBlock, peer: Peer) -> TextReply: ...

    def admit(self, peer_host: str, peer_port: int, local_host: str) -> tuple[Peer, TextReply | None]:
        """Who this client is (with its admin right) and a connection slot for it, or the refusal (no slot taken)."""

    def release_slot(self, peer: Peer) -> None:
        """Give back the slot admit took for this client."""

    def handler_failed(self, exc: Exception, peer: Peer) -> TextReply:
        """Count and log (rate-limited) an exception nobody foresaw; the error line for the client."""

    async def tap(self, connection: "Connection", kind: str, key: str) -> None: ...


class TooLong:
    """Queue marker: the next line was over the limit."""


@dataclass(frozen=True)
class InputEnded:
    """Queue marker: the client closed; ``partial`` is what it sent after its last newline.

    Queued (not handled at once) because the lines before it may still wait behind a command,
    and only after them does the session know whether a /config block is open.
    """

    partial: bytes


class Connection(asyncio.BufferedProtocol):
    """A client on the command port (role "command") or a data port (role "data")."""

    def __init__(self, host: Host, role: str) -> None:
        self.host = host
        self.role = role
        self.limits = host.limits
        self.transport: asyncio.Transport | None = None
        self.read_view = memoryview(bytearray(READ_CHUNK_BYTES))
        self.buffer = b""
        self.queue: deque[bytes | Item | TooLong | InputEnded] = deque()
        self.worker: asyncio.Task | None = None
        self.eof = False
        self.hung_up = False
        self.discarded = 0
        self.holds: set[str] = set()
        self.last_active = time.monotonic()
        self.session = LineSession(data_port=(role == "data"), max_config_bytes=self.limits.max_line_bytes)
        self.peer = Peer()
        self.has_slot = False  # admit gave us a slot: connection_lost gives it back
        self.peer_address: str | None = None  # canonical, computed on the first check (admins never need it)

    # ---- asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's transport
        self.host.counters["connections_total"] += 1
        peername = transport.get_extra_info("peername") or ("", 0)
        sockname = transport.get_extra_info("sockname") or ("", 0)
        self.peer, refusal = self.host.admit(str(peername[0]), int(peername[1]), str(sockname[0]))
        if refusal is not None:
            self.hang_up(refusal)
            return
        self.has_slot = True
        self.host.connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Reads land here, READ_CHUNK_BYTES at a time: a flood holds the loop for one small chunk, not 256 KiB."""
        return self.read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.read_view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.hung_up:
            self._discard(len(data))
            return
        self.host.counters["bytes_in"] += len(data)
        lines = (self.buffer + data).split(b"\n") if self.buffer else data.split(b"\n")
        self.buffer = lines.pop()
        if lines:  # idleness is time since the last complete line: a byte now and then does not keep a slot
            self.last_active = time.monotonic()
        self.host.counters["lines_in"] += len(lines)
        self._take(lines)
        if len(self.buffer) > self.limits.max_line_bytes and not self.hung_up:
            self.buffer = b""
            self._push(TooLong())

    def eof_received(self) -> bool:
        """The client half-closed: answer what it sent, then close (True keeps our write side open)."""
        self.eof = True
        self._input_ended()
        if self.worker is None:
            self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.connections.discard(self)
        if self.has_slot:
            self.has_slot = False
            self.host.release_slot(self.peer)
        if not self.eof:  # closed or reset without a half-close first
            self.eof = True  # the worker (if any) finishes the lines already read: a /register still registers
            self._input_ended()

    def _input_ended(self) -> None:
        """No more input: a /config block left open ends with the close (an extension).

        Another partial line is dropped.
        """
        partial, self.buffer = self.buffer, b""
        if self.hung_up:
            return
        if self.queue or self.worker is not None or self.session.in_config_block:
            self._push(InputEnded(partial))
        elif partial:
            self.host.counters["partial_lines_dropped"] += 1

    def pause_writing(self) -> None:
        self.hold(HOLD_WRITE)  # the client does not read its replies: stop reading its lines

    def resume_writing(self) -> None:
        self.release(HOLD_WRITE)

    def hold(self, reason: str) -> None:
        """Stop reading from the client (TCP then pushes back on it) until every reason is released."""
        self.holds.add(reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def release(self, reason: str) -> None:
        if reason not in self.holds:
            return
        self.holds.discard(reason)
        self.last_active = time.monotonic()  # time spent held is not idleness
        if not self.holds and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # ---- lines -----------------------------------------------------------------------
    def _take(self, lines: list[bytes]) -> None:
        """The fast path: data lines go out as one batch per run of one source; anything else queues."""
        source, batch = "", []
        for index, line in enumerate(lines):
            if self.queue or self.worker is not None:
                self._ingest(source, batch)
                for rest in lines[index:]:
                    self._push(rest)
                return
            if len(line) > self.limits.max_line_bytes:
                self._ingest(source, batch)
                self._push(TooLong())
                return
            item = self.session.feed(line)
            if isinstance(item, DataLine):
                if item.source != source:
                    self._ingest(source, batch)
                    source, batch = item.source, []
                batch.append(item.payload)
            elif item is not None:
                self._ingest(source, batch)
                source, batch = "", []
                self._push(item)
            if self.hung_up:
                return
        self._ingest(source, batch)

    def _ingest(self, source: str, batch: list[bytes]) -> None:
        if batch and self._may_send_as(source):
            self.host.ingest(source, batch, self)

    def _may_send_as(self, source: str) -> bool:
        """Data as a peripheral registered from another host needs admin, else we hang up (one check per batch)."""
        if self.peer.admin:
            return True
        record = self.host.replica.peripherals.get(source)
        if record is None and source in self.host.routed_sources:
            # a uuid only a route knows: by its route's port, it is on this machine (as in the original)
            record = ROUTE_ONLY_SOURCE
        if self.peer_address is None:
            self.peer_address = canonical_host(self.peer.host)
        if (record is None or record.get("host") == self.peer_address
                or same_host(record.get("host"), self.peer_address)):
            return True  # an unknown source is counted and dropped by the gateway
        text = (f"Error: data as {source} refused: that peripheral is registered from another host, so sending as it "
                f"needs admin rights (admin_clients or /auth); closing connection")
        self.host.refused_identity(self.peer.host, text)
        self.hang_up(error(text, ErrorCode.NOT_OWNER))
        return False

    def _push(self, entry: bytes | Item | TooLong | InputEnded) -> None:
        """Queue an entry behind the worker (starting it), pausing reads when too much waits."""
        self.queue.append(entry)
        if len(self.queue) >= QUEUE_PAUSE_LINES:
            self.hold(HOLD_QUEUE)
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        """Handle queued entries in order, awaiting commands; then close if the client is done.

        Whatever a line makes a handler raise costs the client an error line, never the worker:
        a dead worker would leave a half-closed client's slot taken until the idle timeout.
        """
        try:
            while self.queue and not self.hung_up:
                await self._handle_safely(self.queue.popleft())
                if len(self.queue) == QUEUE_RESUME_LINES:
                    self.release(HOLD_QUEUE)
        finally:
            self.worker = None
            if self.hung_up:
                self.queue.clear()
            elif self.eof:
                self._close()

    async def _handle_safely(self, entry: bytes | Item | TooLong | InputEnded) -> None:
        try:
            await self._handle(entry)
        except Exception as exc:  # noqa: BLE001 - the connection's one catch-all: answer, count, log, hang up
            self.hang_up(dataclasses.replace(self.host.handler_failed(exc, self.peer), close=True))

    async def _handle(self, entry: bytes | Item | TooLong | InputEnded) -> None:
        if isinstance(entry, TooLong):
            self.host.counters["too_long"] += 1
            self.hang_up(error(f"Error: line longer than {self.limits.max_line_bytes} bytes; closing connection"))
            return
        if isinstance(entry, InputEnded):
            item = self._ended_item(entry)
        else:
            item = self.session.feed(entry) if isinstance(entry, bytes) else entry
        if item is None:
            return
        if isinstance(item, DataLine):
            self._ingest(item.source, [item.payload])
            return
        if isinstance(item, BadLine):
            self.host.counters["bad_lines"] += 1
            reply = item.reply
        else:
            reply = await self.host.answer(item, self.peer)
            if reply.grant_admin:
                self.peer = dataclasses.replace(self.peer, admin=True)
        if reply.close:
            self.hang_up(reply)
        else:
            self.write(reply.wire())
            if reply.tap is not None:
                await self.host.tap(self, *reply.tap)

    def _ended_item(self, entry: InputEnded) -> Item | None:
        """The /config block the close ended, if one was open; else the partial line is counted as dropped."""
        in_block = self.session.in_config_block
        item = self.session.end(entry.partial)
        if not in_block and entry.partial:
            self.host.counters["partial_lines_dropped"] += 1
        return item

    # ---- output and closing ----------------------------------------------------------
    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.hung_up

    def write_buffered(self) -> int:
        """Bytes written to this client that it has not read yet."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def write(self, data: bytes) -> None:
        """Write unless the client is gone (many send one line and close without reading)."""
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def hang_up(self, last: TextReply) -> None:
        """Send a last line, half-close, and discard what still arrives for LINGER_S."""
        if self.hung_up or self.transport is None:
            return
        self.hung_up = True
        self.write(last.wire())
        if self.eof or self.transport.is_closing() or not self.transport.can_write_eof():
            self._close()
            return
        try:
            self.transport.write_eof()
        except OSError:  # the client is already gone
            self._close()
            return
        asyncio.get_running_loop().call_later(LINGER_S, self._close)

    def _discard(self, count: int) -> None:
        self.discarded += count
        if self.discarded > LINGER_MAX_BYTES:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def idle_for(self, now: float) -> float:
        """Seconds since the client last sent something (0 while we are still working for it)."""
        busy = self.worker is not None or self.hung_up or HOLD_BACKPRESSURE in self.holds
        return 0.0 if busy else now - self.last_active

    def abort(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        if self.transport is not None:
            self.transport.abort()
