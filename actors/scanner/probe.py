"""Probing ports for peripherals: the /info answer parser and one bounded, concurrent sweep.

Pure networking on asyncio, no bus: the scanner actor decides what to sweep and what to do with
the results; tests and the benchmark call ``sweep`` directly. Each probe is a non-blocking connect
(at most CONNECT_TIMEOUT_S), ``/info\\n``, then a read until an ``EOF`` line or close, bounded by
the answer timeout (orch.cf ``scan_answer_timeout``) and MAX_ANSWER_BYTES (docs/protocol.md §4).
"""
from __future__ import annotations

import asyncio
import errno
import re
import resource
import select
import socket
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Iterator

from ..core.settings import TUNABLE_DEFAULTS
from ..core.records import NAME_PATTERN, is_uuid

INFO_REQUEST = b"/info\n"
EOF_LINE = "EOF"
# The answer is complete once a line reads exactly EOF (a \r before the \n is tolerated).
EOF_PATTERN = re.compile(rb"(?:^|\n)EOF\r?\n")
CONNECT_TIMEOUT_S = 0.25
# What a port that accepted may take to answer, unless the caller says otherwise (the default of scan_answer_timeout).
ANSWER_TIMEOUT_S = TUNABLE_DEFAULTS["scan_answer_timeout"]
MAX_ANSWER_BYTES = 64 * 1024
READ_CHUNK_BYTES = 4096
MAX_CONCURRENT_PROBES = 512
CONNECT_CHECK_S = CONNECT_TIMEOUT_S / 5
CONNECT_PENDING_ERRNOS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK})
# Keep half the descriptor limit for everything else the process holds.
FD_SHARE_FOR_PROBES = 2


# ---- the /info answer ---------------------------------------------------------------------------
class BadAnswer(ValueError):
    """An /info answer that does not describe a peripheral; the message says why."""


@dataclass(frozen=True)
class InfoAnswer:
    """What a peripheral says about itself."""

    name: str
    uuid: str
    config: dict[str, str] = field(default_factory=dict)


def parse_info(data: bytes) -> InfoAnswer:
    """Parse ``name\\nuuid\\n[key=value\\n...]EOF\\n``: three lines at least (docs/protocol.md §4), EOF
    optional after a key=value."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadAnswer("not UTF-8 text") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    ended = EOF_LINE in lines
    if ended:
        lines = lines[: lines.index(EOF_LINE)]
    lines = [line for line in lines if line.strip()]
    if len(lines) < 2:
        raise BadAnswer(f"expected a name and a uuid line, got {len(lines)} line(s)")
    if len(lines) == 2 and not ended:
        raise BadAnswer("a name and a uuid line only: a third line (key=value or EOF) is required")
    name, uuid = lines[0].strip(), lines[1].strip()
    if not NAME_PATTERN.match(name) or not name.isprintable():
        raise BadAnswer(f"invalid name {name[:40]!r}")
    if not is_uuid(uuid):
        raise BadAnswer(f"invalid uuid {uuid[:40]!r}")
    return InfoAnswer(name=name, uuid=uuid, config=_config_lines(lines[2:]))


def _config_lines(lines: Iterable[str]) -> dict[str, str]:
    """key=value lines; lines without '=' are ignored, as the original did with anything it did not use."""
    config = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip():
            config[key.strip()] = value.strip()
    return config


# ---- one probe ------------------------------------------------------------------------------------
class Outcome(str, Enum):
    """What one (host, port) did when probed."""

    CLOSED = "closed"  # refused, unreachable, or connect timed out: nothing to talk to
    SILENT = "silent"  # accepted and said nothing within the answer timeout
    EMPTY = "empty"  # accepted and closed without a byte
    GARBAGE = "garbage"  # said something that is not an /info answer
    FOUND = "found"
    ERROR = "error"  # a local failure (e.g. out of descriptors): says nothing about the port


@dataclass(frozen=True)
class Target:
    """A port to probe: the host as configured, and the address it resolved to."""

    host: str
    address: str
    family: int
    port: int


@dataclass(frozen=True)
class ProbeResult:
    target: Target
    outcome: Outcome
    answer: InfoAnswer | None = None
    reason: str = ""


async def _read_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Read until an EOF line, close, the byte cap or the answer timeout; returns (bytes, ended)."""
    buffer = bytearray()

    async def read_until_end() -> bool:
        while len(buffer) < MAX_ANSWER_BYTES:
            chunk = await loop.sock_recv(sock, READ_CHUNK_BYTES)
            if not chunk:
                return True
            buffer.extend(chunk)
            if EOF_PATTERN.search(buffer):
                return True
        return False

    try:
        # wait_for, not asyncio.timeout: robot boards run Python 3.10
        ended = await asyncio.wait_for(read_until_end(), timeout_s)
    except asyncio.TimeoutError:
        return bytes(buffer), False
    except OSError:  # reset by the peer: what arrived before it is all there is
        return bytes(buffer), True
    return bytes(buffer), ended


def _judge(target: Target, data: bytes, ended: bool) -> ProbeResult:
    """Turn what a port sent into an outcome."""
    if not data:
        return ProbeResult(target, Outcome.EMPTY if ended else Outcome.SILENT)
    if len(data) >= MAX_ANSWER_BYTES and not EOF_PATTERN.search(data):
        return ProbeResult(target, Outcome.GARBAGE, reason=f"sent {MAX_ANSWER_BYTES} bytes without an EOF line")
    try:
        return ProbeResult(target, Outcome.FOUND, answer=parse_info(data))
    except BadAnswer as exc:
        return ProbeResult(target, Outcome.GARBAGE, reason=str(exc))


async def exchange(sock: socket.socket, target: Target, answer_timeout_s: float = ANSWER_TIMEOUT_S) -> ProbeResult:
    """On a connected socket: send /info, read the bounded answer, judge it; closes the socket."""
    loop = asyncio.get_running_loop()
    try:
        if _self_connected(sock):
            return ProbeResult(target, Outcome.CLOSED)
        try:
            await loop.sock_sendall(sock, INFO_REQUEST)
        except OSError:
            return ProbeResult(target, Outcome.EMPTY)
        data, ended = await _read_answer(loop, sock, answer_timeout_s)
        return _judge(target, data, ended)
    finally:
        sock.close()


def _self_connected(sock: socket.socket) -> bool:
    """A connect to a free port in the ephemeral range can land on itself (TCP simultaneous open)."""
    try:
        return sock.getsockname() == sock.getpeername()
    except OSError:
        return True


def probe_concurrency() -> int:
    """How many probes may be in flight: MAX_CONCURRENT_PROBES, less if the descriptor limit is low."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONCURRENT_PROBES
    return max(1, min(MAX_CONCURRENT_PROBES, soft // FD_SHARE_FOR_PROBES))


class _WriterWatch:
    """Calls back when a connecting socket becomes writable, through the event loop's own selector."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[int], None]) -> None:
        self.loop = loop
        self.callback = callback

    def add(self, fd: int) -> None:
        self.loop.add_writer(fd, self._ready, fd)

    def _ready(self, fd: int) -> None:
        self.loop.remove_writer(fd)
        self.callback(fd)

    def discard(self, fd: int) -> None:
        self.loop.remove_writer(fd)

    def close(self) -> None:
        pass


class _EpollWatch(_WriterWatch):
    """The same through one private epoll whose descriptor the loop watches: thousands of connects
    then cost one C call each instead of a trip through the loop's selector bookkeeping (Linux)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[int], None]) -> None:
        super().__init__(loop, callback)
        self.epoll = select.epoll()
        loop.add_reader(self.epoll.fileno(), self._drain)

    def add(self, fd: int) -> None:
        self.epoll.register(fd, select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP)

    def _drain(self) -> None:
        for fd, _ in self.epoll.poll(0):
            self.epoll.unregister(fd)
            self.callback(fd)

    def discard(self, fd: int) -> None:
        self.epoll.unregister(fd)

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()


def _writer_watch(loop: asyncio.AbstractEventLoop, callback: Callable[[int], None]) -> _WriterWatch:
    return _EpollWatch(loop, callback) if hasattr(select, "epoll") else _WriterWatch(loop, callback)


class _Sweep:
    """One sweep's bookkeeping. Connects are plain callbacks (most ports are closed, so they must be
    cheap); only a port that accepts gets a task for its /info exchange. At most `concurrency`
    sockets are open at once; a connect older than CONNECT_TIMEOUT_S is abandoned."""

    def __init__(self, targets: list[Target], concurrency: int, answer_timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.answer_timeout_s = answer_timeout_s
        self.pending: Iterator[Target] = iter(targets)
        self.concurrency = concurrency
        self.in_flight = 0
        self.connecting: dict[int, tuple[socket.socket, Target, float]] = {}
        self.exchanges: set[asyncio.Task] = set()
        self.results: list[ProbeResult] = []
        self.finished: asyncio.Future = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.watch = _writer_watch(self.loop, self._on_writable)

    async def run(self) -> list[ProbeResult]:
        try:
            self._fill()
            self._expire()
            await self.finished
        finally:
            self._abandon()
        return self.results

    def _fill(self) -> None:
        """Start connects until `concurrency` are in flight or no target is left."""
        while self.in_flight < self.concurrency:
            target = next(self.pending, None)
            if target is None:
                break
            self._start(target)
        if self.in_flight == 0 and not self.finished.done():
            self.finished.set_result(None)

    def _start(self, target: Target) -> None:
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors or buffers: not the port's fault
            self.results.append(ProbeResult(target, Outcome.ERROR, reason=str(exc)))
            return
        sock.setblocking(False)
        err = sock.connect_ex((target.address, target.port))
        if err in CONNECT_PENDING_ERRNOS:
            # A refusal on this machine is settled before connect returns: judged now, without a round through
            # the selector (most ports of a sweep are closed; this halves what each costs).
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or err
        self.in_flight += 1
        if err == 0:
            self._connected(sock, target)
        elif err in CONNECT_PENDING_ERRNOS:
            self.connecting[sock.fileno()] = (sock, target, time.monotonic() + CONNECT_TIMEOUT_S)
            self.watch.add(sock.fileno())
        else:
            self._done(sock, ProbeResult(target, Outcome.CLOSED))

    def _on_writable(self, fd: int) -> None:
        sock, target, _ = self.connecting.pop(fd)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._done(sock, ProbeResult(target, Outcome.CLOSED))
            self._fill()
        else:
            self._connected(sock, target)

    def _connected(self, sock: socket.socket, target: Target) -> None:
        task = self.loop.create_task(exchange(sock, target, self.answer_timeout_s))
        self.exchanges.add(task)
        task.add_done_callback(self._exchange_done)

    def _exchange_done(self, task: asyncio.Task) -> None:
        self.exchanges.discard(task)
        if task.cancelled():
            return
        self.in_flight -= 1
        self.results.append(task.result())
        self._fill()

    def _done(self, sock: socket.socket, result: ProbeResult) -> None:
        sock.close()
        self.in_flight -= 1
        self.results.append(result)

    def _expire(self) -> None:
        """Abandon connects that took too long (a host that drops SYNs), then look again later."""
        now = time.monotonic()
        for fd, (sock, target, deadline) in list(self.connecting.items()):
            if deadline <= now:
                self.watch.discard(fd)
                del self.connecting[fd]
                self._done(sock, ProbeResult(target, Outcome.CLOSED))
        self._fill()
        if not self.finished.done():
            self.timer = self.loop.call_later(CONNECT_CHECK_S, self._expire)

    def _abandon(self) -> None:
        """Release everything still open (normal end: nothing; cancellation: whatever was in flight)."""
        if self.timer is not None:
            self.timer.cancel()
        for fd, (sock, _, _) in self.connecting.items():
            self.watch.discard(fd)
            sock.close()
        self.connecting.clear()
        self.watch.close()
        for task in self.exchanges:
            task.cancel()


def accepting(results: Iterable[ProbeResult]) -> set[tuple[str, int]]:
    """(host, port) pairs that accepted a connection: the only ones that can take long next time."""
    return {(r.target.host, r.target.port) for r in results if r.outcome not in (Outcome.CLOSED, Outcome.ERROR)}


def slow_first(targets: Iterable[Target], accepted_before: set[tuple[str, int]]) -> list[Target]:
    """Ports that accepted last sweep go first, so their answer wait overlaps the many quick refusals."""
    return sorted(targets, key=lambda t: (t.host, t.port) not in accepted_before)


async def sweep(targets: Iterable[Target], concurrency: int | None = None,
                answer_timeout_s: float = ANSWER_TIMEOUT_S) -> list[ProbeResult]:
    """Probe every target, at most `concurrency` at a time; one slow port holds one slot, never the sweep."""
    return await _Sweep(list(targets), concurrency or probe_concurrency(), answer_timeout_s).run()
