"""Delivery to one sink peripheral: a bounded FIFO and one worker thread per sink, in either mode.

Why threads: a blocking loopback connect/write/close costs about 64 us of CPU per message,
the same through asyncio about 150 us (a writer registration and a loop turn per connect).
Socket calls release the GIL, so per-sink threads also spread the kernel's work over the
cores. One thread per sink keeps one delivery in flight per sink (order), lets sinks proceed
in parallel, and a slow or dead sink only ever blocks its own thread.

Threads never touch zmq sockets or log lines: they hand finished chunks and up/down
transitions to ``report`` (the router posts them onto its event loop), so all counting,
acknowledging and logging happens in the router's one loop thread.

Modes (docs/protocol.md §1): ``message`` opens one connection per payload (connect, write
``payload\\n``, close) as existing sinks expect; ``stream`` keeps one connection open and
writes many newline-framed lines per write.

Latency: a stream sink that is idle (nothing queued, connection open, sink up) is written to
straight from the router's loop thread with one non-blocking send (``SinkWorker.try_direct``):
no hand-off to the worker thread, which on a busy 2-core machine costs a scheduler wake-up
and a GIL hand-over. Whatever the socket does not take at once goes to the worker as usual.

Age bound: a payload that waited longer than ``max_age_s`` is dropped (``Chunk.expired``),
never delivered late, whatever the sink's state and in both modes: stale chunks are dropped
before each take, before each payload of message mode, and while a stream write is blocked on
a sink that does not read (the connection is then closed: a half-written line is never
completed later). What the kernel already accepted on a connection counts as delivered.

Stall: ``SinkWorker.stalled_for`` says how long the oldest payload held for the sink has
waited, so the router can stop waiting for a sink that does not keep up (router.py, "parked").
"""
from __future__ import annotations

import collections
import errno
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..core.settings import TUNABLE_DEFAULTS

# A per-message payload written from the router thread is at most this (far below a socket buffer).
DIRECT_MESSAGE_MAX_BYTES = 16 * 1024

MODE_MESSAGE = "message"
MODE_STREAM = "stream"

SINK_QUEUE_MAX_MESSAGES = int(TUNABLE_DEFAULTS["router_queue_messages"])
SINK_QUEUE_MAX_BYTES = int(TUNABLE_DEFAULTS["router_queue_bytes"])
CONNECT_TIMEOUT_S = 2.0
# A blocked write in stream mode waits this long, then tries again on the same connection.
SEND_TIMEOUT_S = 1.0
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
STREAM_WRITE_MAX_BYTES = 256 * 1024
# How often an idle worker looks at its stop flag.
IDLE_WAIT_S = 0.25
# A blocked stream write wakes at least this often near its age deadline.
MIN_BLOCKED_WAIT_S = 0.01
SINK_QUEUE_MAX_AGE_S = float(TUNABLE_DEFAULTS["router_queue_age_s"])
NEWLINE = b"\n"


@dataclass(frozen=True)
class SinkAddress:
    """Where and how to deliver: the outgoing peripheral's host, port and delivery mode."""

    host: str
    port: int
    mode: str = MODE_MESSAGE


@dataclass(eq=False)
class Chunk:
    """The payloads of one batch for one route; done once each was delivered or dropped."""

    route: str
    payloads: list[bytes]
    nbytes: int  # payload bytes plus one newline each
    token: Any = None  # the router's batch tracker; opaque here
    delivered: int = 0
    delivered_bytes: int = 0
    dropped: int = 0  # beyond the queue bound, at enqueue
    expired: int = 0  # waited longer than the age bound for a sink that is down
    written: int = 0  # bytes already written on the current stream connection (a partial direct write)
    queued_at: float = 0.0  # time.monotonic() at enqueue (0: never queued, e.g. written directly)
    settled: bool = False  # the router counted it done for its batch's ack (delivered, dropped, or parked)
    trace: list | None = None  # sampled for the latency breakdown only: wall-clock stage times, the write's added

    def finish_written(self) -> None:
        """Every payload went out."""
        self.delivered = len(self.payloads)
        self.delivered_bytes = self.nbytes - len(self.payloads)
        if self.trace is not None:
            self.trace.append(time.time())


def _loopback(host: str) -> bool:
    """127.0.0.0/8 or ::1: where a connect completes inside connect() itself."""
    return host.startswith("127.") or host == "::1"


def framed_size(payloads: list[bytes]) -> int:
    """Bytes on the wire for these payloads, one newline each."""
    return sum(map(len, payloads)) + len(payloads)


class Backoff:
    """Exponential retry delay: initial, doubling, capped; reset by a success."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, maximum_s: float = BACKOFF_MAX_S) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.delay_s = 0.0

    def failure(self) -> float:
        """The delay to wait before the next attempt."""
        self.delay_s = self.initial_s if self.delay_s == 0 else min(self.delay_s * 2, self.maximum_s)
        return self.delay_s

    def success(self) -> None:
        self.delay_s = 0.0


class SinkQueue:
    """A FIFO of chunks bounded in messages and bytes, counting what is taken until it is released.

    ``offer`` (router thread) keeps what fits and returns how many payloads it dropped (tail
    drop: what is queued keeps its order, the newest beyond the bound go). ``take``/``release``
    run in the worker thread.
    """

    def __init__(self, max_messages: int = SINK_QUEUE_MAX_MESSAGES, max_bytes: int = SINK_QUEUE_MAX_BYTES) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.chunks: collections.deque[Chunk] = collections.deque()
        self.messages = 0
        self.nbytes = 0
        self.taken: list[Chunk] = []  # what the worker took and has not released yet
        self.ready = threading.Condition(threading.Lock())

    def offer(self, chunk: Chunk, direct: Callable[[Chunk], bool] | None = None) -> int:
        """Queue as much of chunk as the bounds allow; return the number of payloads dropped.

        With ``direct``, an empty queue (so an idle worker) first lets direct(chunk) deliver it
        at once; True means delivered and nothing is queued.
        """
        with self.ready:
            if direct is not None and not self.messages and direct(chunk):
                return 0
            chunk.queued_at = time.monotonic()
            room_messages = self.max_messages - self.messages
            room_bytes = self.max_bytes - self.nbytes
            if len(chunk.payloads) > room_messages or chunk.nbytes > room_bytes:
                keep = _fitting(chunk.payloads, room_messages, room_bytes)
                chunk.dropped = len(chunk.payloads) - keep
                chunk.payloads = chunk.payloads[:keep]
                chunk.nbytes = framed_size(chunk.payloads)
            if chunk.payloads:
                self.chunks.append(chunk)
                self.messages += len(chunk.payloads)
                self.nbytes += chunk.nbytes
                self.ready.notify()
            return chunk.dropped

    def take(self, max_bytes: int, timeout: float) -> list[Chunk]:
        """Wait up to timeout for work; return the head chunk and, up to max_bytes, the ones after it."""
        with self.ready:
            if not self.chunks:
                self.ready.wait(timeout)
            taken: list[Chunk] = []
            size = 0
            while self.chunks and (not taken or size + self.chunks[0].nbytes <= max_bytes):
                chunk = self.chunks.popleft()
                size += chunk.nbytes
                taken.append(chunk)
            if taken:
                self.taken = taken
            return taken

    def release(self, chunks: list[Chunk]) -> None:
        """Forget chunks that were delivered (or abandoned); frees their room in the bound."""
        with self.ready:
            for chunk in chunks:
                self.messages -= len(chunk.payloads)
                self.nbytes -= chunk.nbytes
            self.taken = []

    def expire(self, cutoff: float) -> list[Chunk]:
        """Remove the chunks enqueued before cutoff (monotonic), marked expired; they are the oldest, at the head."""
        expired: list[Chunk] = []
        try:
            if self.chunks[0].queued_at >= cutoff:
                return expired  # the common case, without the lock (a deque's head is read atomically)
        except IndexError:
            return expired  # empty (or emptied by the other thread just now)
        with self.ready:
            while self.chunks and self.chunks[0].queued_at < cutoff:
                chunk = self.chunks.popleft()
                chunk.expired = len(chunk.payloads)
                self.messages -= len(chunk.payloads)
                self.nbytes -= chunk.nbytes
                expired.append(chunk)
        return expired

    def oldest_at(self) -> float | None:
        """When the oldest payload still held (being delivered or queued) was queued; None when empty.

        Read without the lock (the router thread polls it each tick): a hint, never used for delivery.
        """
        taken = self.taken
        if taken:
            return taken[0].queued_at
        try:
            return self.chunks[0].queued_at
        except IndexError:
            return None

    def held(self) -> list[Chunk]:
        """Every chunk not released yet, taken (being delivered) first, then queued, in order."""
        with self.ready:
            return [*self.taken, *self.chunks]

    def wake(self) -> None:
        with self.ready:
            self.ready.notify_all()


def _fitting(payloads: list[bytes], room_messages: int, room_bytes: int) -> int:
    """How many leading payloads fit in the room left."""
    used = 0
    for index, payload in enumerate(payloads[:max(room_messages, 0)]):
        used += len(payload) + 1
        if used > room_bytes:
            return index
    return max(min(len(payloads), room_messages), 0)


class SinkConnection(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def send(self, data: bytes | memoryview) -> int: ...
    def recv(self, size: int, flags: int = 0) -> bytes: ...
    def settimeout(self, value: float | None) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class TcpConnector:
    """Opens TCP connections to a sink, resolving its host once per address (IPv4 first, as the original did)."""

    def __init__(self, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._resolved: tuple[tuple[str, int], tuple[int, Any]] | None = None

    def connect(self, address: SinkAddress) -> SinkConnection:
        family, sockaddr = self._resolve(address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout_s)
            sock.connect(sockaddr)
            if sock.getsockname() == sockaddr:
                # No listener, and the kernel picked the sink's own port as ours: TCP connected us to ourselves.
                raise ConnectionRefusedError(errno.ECONNREFUSED, "SinkConnection refused (self-connect)")
        except OSError:
            sock.close()
            raise
        return sock

    def resolved(self, address: SinkAddress) -> tuple[int, Any] | None:
        """The address as the worker last resolved it, or a numeric one (None for a name not resolved yet: a lookup
        may block)."""
        cached = self._resolved
        if cached is not None and cached[0] == (address.host, address.port):
            return cached[1]
        try:
            infos = socket.getaddrinfo(address.host, address.port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            return None
        return infos[0][0], infos[0][4]

    def _resolve(self, address: SinkAddress) -> tuple[int, Any]:
        key = (address.host, address.port)
        if self._resolved is None or self._resolved[0] != key:
            infos = socket.getaddrinfo(address.host, address.port, 0, socket.SOCK_STREAM)
            infos.sort(key=lambda info: info[0] != socket.AF_INET)
            self._resolved = (key, (infos[0][0], infos[0][4]))
        return self._resolved[1]

    def forget(self) -> None:
        """Resolve again next time (the host may have moved)."""
        self._resolved = None


Report = Callable[["SinkWorker", list[Chunk], str | None], None]


class SinkWorker:
    """The one thread that delivers a sink's queue, in order, retrying with backoff while the sink is down."""

    def __init__(self, key: str, address: SinkAddress | None, queue: SinkQueue, report: Report,
                 connector: Any = None, backoff: Backoff | None = None, send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.key = key
        self.address = address  # replaced by the router thread when the peripheral changes
        self.queue = queue
        self.report = report
        self.connector = connector or TcpConnector()
        self.backoff = backoff or Backoff()
        self.send_timeout_s = send_timeout_s
        self.max_age_s = SINK_QUEUE_MAX_AGE_S  # replaced by the router thread when the config changes
        self.direct_writes = 0
        self.stopping = threading.Event()
        self.down_reason: str | None = None
        self.stream: SinkConnection | None = None
        self.stream_address: SinkAddress | None = None
        self.connections = 0
        self.thread = threading.Thread(target=self._run, name=f"sink-{key[:8]}", daemon=True)

    def start(self) -> "SinkWorker":
        self.thread.start()
        return self

    def stop(self, join_s: float = 0.0) -> None:
        self.stopping.set()
        self.queue.wake()
        if join_s > 0 and self.thread.is_alive():
            self.thread.join(join_s)

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._expire_queued()
                chunks = self.queue.take(self._take_limit(), IDLE_WAIT_S)
                if chunks:
                    self._deliver(chunks)
                    self.queue.release(chunks)
                    if self.stopping.is_set() and any(c.delivered + c.expired < len(c.payloads) for c in chunks):
                        return  # unfinished at shutdown: never reported, so never acknowledged
                    self.report(self, chunks, None)
        finally:
            self._close_stream()

    def _take_limit(self) -> int:
        """Many chunks per stream write; one at a time in message mode, or while the sink is down (exact expiry)."""
        address = self.address
        up = self.down_reason is None
        return STREAM_WRITE_MAX_BYTES if up and address is not None and address.mode == MODE_STREAM else 0

    def stalled_for(self, now: float) -> float:
        """How long the oldest payload held for this sink has waited (0 when idle); inf while the sink is down.

        A sink that keeps up keeps this small whatever its pace; one that is stuck or slower than
        its sources lets it grow, even while it still takes a line now and then.
        """
        if self.down_reason is not None:
            return float("inf")
        oldest = self.queue.oldest_at()
        return 0.0 if oldest is None else max(now - oldest, 0.0)

    def _expire_queued(self) -> None:
        """Drop (and report) the queued chunks older than the age bound, before taking any."""
        stale = self.queue.expire(time.monotonic() - self.max_age_s)
        if stale:
            self.report(self, stale, None)

    def try_direct(self, chunk: Chunk) -> bool:
        """Router thread, queue lock held, queue empty (the worker is idle): one non-blocking write to the open stream.

        True when all of chunk went out. A partial write leaves ``chunk.written`` set and returns
        False: the chunk is queued and the worker writes the rest on the same connection first.
        """
        stream, address = self.stream, self.address
        if address is not None and address.mode == MODE_MESSAGE:
            return self.down_reason is None and not self.stopping.is_set() and self._direct_message(chunk, address)
        if (stream is None or address is None or address.mode != MODE_STREAM or address != self.stream_address
                or self.down_reason is not None or self.stopping.is_set() or _peer_closed(stream)):
            return False
        data = NEWLINE.join(chunk.payloads) + NEWLINE
        try:
            sent = stream.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False  # the worker finds the broken connection on its next write and reconnects
        self.direct_writes += 1
        if sent == len(data):
            chunk.finish_written()
            return True
        chunk.written = sent
        return False

    def _direct_message(self, chunk: Chunk, address: SinkAddress) -> bool:
        """Router thread, worker idle: a lone payload to a loopback sink goes out here (connect, write, close) instead
        of waiting for the worker thread's turn. Anything short of a whole write (refused, backlog full, not loopback,
        not resolved yet) leaves it to the worker, which retries, backs off and reports; the sink received nothing."""
        resolve = getattr(self.connector, "resolved", None)
        resolved = resolve(address) if resolve is not None else None
        data = chunk.payloads[0] + NEWLINE if len(chunk.payloads) == 1 else b""
        if resolved is None or not data or len(data) > DIRECT_MESSAGE_MAX_BYTES or not _loopback(resolved[1][0]):
            return False
        family, sockaddr = resolved
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if sock.connect_ex(sockaddr) not in (0, errno.EINPROGRESS) or sock.getsockname() == sockaddr:
                return False
            if sock.send(data) != len(data):
                return False  # not reached: a loopback socket takes far more than DIRECT_MESSAGE_MAX_BYTES at once
        except OSError:
            return False  # not connected yet (EAGAIN/ENOTCONN) or refused: the worker does it
        finally:
            sock.close()
        self.connections += 1
        self.direct_writes += 1
        chunk.finish_written()
        return True

    def _deliver(self, chunks: list[Chunk]) -> None:
        address = self.address
        if address is not None and address.mode == MODE_STREAM:
            self._deliver_stream(chunks)
            return
        self._close_stream()
        for chunk in chunks:
            self._deliver_messages(chunk)

    # ---- per-message mode -------------------------------------------------------------
    def _deliver_messages(self, chunk: Chunk) -> None:
        """connect, write payload\\n, close: once per payload, resuming where a failure stopped."""
        payloads = chunk.payloads
        now = time.monotonic()
        while chunk.delivered < len(payloads) and not self.stopping.is_set():
            if self._too_old(chunk, now):
                chunk.expired = len(payloads) - chunk.delivered
                return
            payload = payloads[chunk.delivered]
            try:
                self._send_one(payload)
            except OSError as exc:
                self._failed(exc)
                now = time.monotonic()
                continue
            chunk.delivered += 1
            chunk.delivered_bytes += len(payload)
            if chunk.trace is not None and chunk.delivered == 1:
                chunk.trace.append(time.time())  # the first payload's write: the one the trace follows
            now = time.monotonic()
            self._succeeded()

    def _send_one(self, payload: bytes) -> None:
        address = self._current_address()
        conn = self.connector.connect(address)
        self.connections += 1
        try:
            conn.sendall(payload + NEWLINE)
        finally:
            conn.close()

    # ---- stream mode ------------------------------------------------------------------
    def _deliver_stream(self, chunks: list[Chunk]) -> None:
        """One write for many lines on the persistent connection; reconnect and resend from a line start on failure."""
        data = b"".join(NEWLINE.join(chunk.payloads) + NEWLINE for chunk in chunks)
        view = memoryview(data)
        offset = chunks[0].written  # what a direct write already put on the current connection
        used = self.stream if offset else None
        while offset < len(data) and not self.stopping.is_set():
            conn = None
            try:
                conn = self._stream_connection()
                if conn is not used:
                    # A new connection starts at a line start.
                    offset = data.rfind(NEWLINE, 0, offset) + 1 if offset else 0
                    used = conn
                    if self._expire_stream(chunks, data, offset):
                        return  # aged while we waited to (re)connect: never delivered late
                offset += conn.send(view[offset:])
            except (BlockingIOError, InterruptedError, TimeoutError):
                if self._expire_stream(chunks, data, offset):
                    self._close_stream()  # the sink does not read: never finish a half-written line later
                    self._mark_down(f"not reading for {self.max_age_s:g}s")
                    return
                # A slow reader: keep waiting on the same connection.
                _wait_writable(conn, self._blocked_wait_s(chunks, offset))
                continue
            except OSError as exc:
                self._close_stream()
                offset = data.rfind(NEWLINE, 0, offset) + 1 if offset else 0
                self._failed(exc)
                if self._expire_stream(chunks, data, offset):
                    return
                continue
            self._succeeded()
        if offset >= len(data):
            for chunk in chunks:
                chunk.finish_written()

    def _expire_stream(self, chunks: list[Chunk], data: bytes, offset: int) -> bool:
        """The oldest unwritten chunk passed the age bound: whole lines written count delivered, the rest expired."""
        first = _first_unwritten(chunks, offset)
        if first is None or not self._too_old(first, time.monotonic()):
            return False
        start = 0
        for chunk in chunks:
            written = min(max(offset - start, 0), chunk.nbytes)
            # Bytes of the whole lines written (0: none).
            whole = data.rfind(NEWLINE, start, start + written) + 1 - start
            chunk.delivered = data.count(NEWLINE, start, start + written)
            chunk.delivered_bytes = max(whole, 0) - chunk.delivered
            chunk.expired = len(chunk.payloads) - chunk.delivered
            start += chunk.nbytes
        return True

    def _blocked_wait_s(self, chunks: list[Chunk], offset: int) -> float:
        """How long a blocked write waits for room: at most until its oldest unwritten line passes the age bound."""
        first = _first_unwritten(chunks, offset)
        if first is None:
            return self.send_timeout_s
        left = first.queued_at + self.max_age_s - time.monotonic()
        return min(self.send_timeout_s, max(left, MIN_BLOCKED_WAIT_S))

    def _stream_connection(self) -> SinkConnection:
        address = self._current_address()
        if self.stream is not None and (self.stream_address != address or _peer_closed(self.stream)):
            self._close_stream()
        if self.stream is None:
            self.stream = self.connector.connect(address)
            self.stream.setblocking(False)  # writes wait in _wait_writable; the router thread may write once when idle
            self.stream_address = address
            self.connections += 1
        return self.stream

    def _close_stream(self) -> None:
        if self.stream is not None:
            try:
                self.stream.close()
            except OSError:
                pass
            self.stream = None

    # ---- health -----------------------------------------------------------------------
    def _current_address(self) -> SinkAddress:
        address = self.address
        if address is None or not address.port:
            raise ConnectionError(errno.EDESTADDRREQ, "the sink has no known address")
        return address

    def _failed(self, exc: OSError) -> None:
        self._mark_down(exc.strerror or str(exc) or type(exc).__name__)
        forget = getattr(self.connector, "forget", None)
        if forget is not None:
            forget()
        self.stopping.wait(self.backoff.failure())

    def _mark_down(self, reason: str) -> None:
        """Report the first failure of a down episode (the router logs it and stops waiting for this sink)."""
        if self.down_reason is None:
            self.down_reason = reason
            self.report(self, [], f"down: {reason}")

    def _too_old(self, chunk: Chunk, now: float) -> bool:
        """Did chunk wait longer than the age bound?"""
        return chunk.queued_at < now - self.max_age_s

    def _succeeded(self) -> None:
        if self.down_reason is not None:
            self.down_reason = None
            self.report(self, [], "up")
        self.backoff.success()


def _first_unwritten(chunks: list[Chunk], offset: int) -> Chunk | None:
    """The chunk holding byte offset of the joined write (None: all written)."""
    end = 0
    for chunk in chunks:
        end += chunk.nbytes
        if end > offset:
            return chunk
    return None


def _wait_writable(conn: SinkConnection | None, timeout_s: float) -> None:
    """Block (this worker thread only) until the stream can take more, or timeout_s."""
    if conn is None:
        return
    try:
        select.select([], [conn], [], timeout_s)
    except (OSError, ValueError):
        pass  # closed meanwhile: the next send fails and reconnects


def _peer_closed(conn: SinkConnection) -> bool:
    """True when the sink closed its end (readable and EOF); whatever it sent us is read and ignored."""
    try:
        while select.select([conn], [], [], 0)[0]:
            if not conn.recv(65536):
                return True
    except (OSError, ValueError):
        return True
    return False
