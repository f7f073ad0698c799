"""Fake peripherals and misbehaving ports on loopback, shared by tests and benchmarks.

Each fake binds its own port (ephemeral unless told), serves every connection in a thread, and
stops cleanly (listener closed, open connections released) on stop() or at the end of a with block.
"""
from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
import uuid as uuidlib
from typing import Callable, Iterator, TypeVar

ACCEPT_POLL_S = 0.05
CONNECTION_TIMEOUT_S = 5.0
STREAM_CHUNK = b"endless stream of words that never says EOF\n" * 64
GARBAGE_ANSWER = b"\x00\xff\xfe binary \x80 nonsense\nnot-a-uuid\nEOF\n"
LISTEN_BACKLOG = 128
INFO_REQUEST_LINE = b"/info"
SLOW_RECV_BYTES = 1024  # a slow multiplexed sink reads this much at a time, leaving the rest to TCP backpressure

Handler = Callable[[socket.socket, "FakeListener"], None]


def listen_in_thread(host: str, port: int, serve: Callable[[socket.socket], None], label: str,
                     backlog: int = LISTEN_BACKLOG) -> tuple[socket.socket, threading.Thread]:
    """Bind and listen (port 0: an ephemeral port), then run serve(listener) in a daemon thread."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(backlog)
    listener.settimeout(ACCEPT_POLL_S)
    thread = threading.Thread(target=serve, args=(listener,), name=f"{label}-{listener.getsockname()[1]}", daemon=True)
    thread.start()
    return listener, thread


def accept_until_stopped(listener: socket.socket, stopping: threading.Event,
                         may_accept: Callable[[], bool] = lambda: True) -> Iterator[socket.socket]:
    """Accepted connections until stopping is set or the listener is closed (it polls every ACCEPT_POLL_S); while
    may_accept() is false, connects wait in the backlog."""
    while not stopping.is_set():
        if not may_accept():
            stopping.wait(ACCEPT_POLL_S)
            continue
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        yield conn


def stop_listening(fake: "FakeListener | LineSink") -> None:
    """Stop the accept thread started by listen_in_thread, then close the listener."""
    fake.stopping.set()
    if fake.thread is not None:
        fake.thread.join(timeout=2.0)
        fake.thread = None
    if fake.listener is not None:
        fake.listener.close()
        fake.listener = None


ServedT = TypeVar("ServedT", bound="Served")


class Served:
    """A fake that listens while started: `with fake:` starts it (unless already started) and stops it at the end.
    Subclasses define start() (returning self) and stop(), and set `listener` while listening."""

    listener: socket.socket | None

    def __enter__(self: ServedT) -> ServedT:
        return self.start() if self.listener is None else self  # type: ignore[attr-defined]

    def __exit__(self, *_: object) -> None:
        self.stop()  # type: ignore[attr-defined]


class FakeListener(Served):
    """A TCP listener on loopback whose connections are served by `handler(conn, self)` in threads."""

    def __init__(self, handler: Handler, port: int = 0, host: str = "127.0.0.1", backlog: int = LISTEN_BACKLOG) -> None:
        self.handler = handler
        self.host = host
        self.backlog = backlog
        self.requested_port = port
        self.port = port
        self.stopping = threading.Event()
        self.connections = 0
        self.lines: list[str] = []  # data lines received (anything but /info), for sink-style checks
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.open_conns: set[socket.socket] = set()

    def start(self) -> "FakeListener":
        """Bind (port 0: an ephemeral port) and start accepting."""
        self.stopping.clear()
        host = "127.0.0.1" if self.host is None else self.host
        self.listener, self.thread = listen_in_thread(host, self.port, self._accept_loop, "fake", self.backlog)
        self.port = self.listener.getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; the port refuses connections afterwards."""
        stop_listening(self)
        with self.lock:
            for conn in list(self.open_conns):
                _close_quietly(conn)
            self.open_conns.clear()

    def _accept_loop(self, listener: socket.socket) -> None:
        for conn in accept_until_stopped(listener, self.stopping):
            with self.lock:
                self.connections += 1
                self.open_conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(CONNECTION_TIMEOUT_S)
        try:
            self.handler(conn, self)
        except OSError:
            pass  # the prober went away: normal for a fake
        finally:
            with self.lock:
                self.open_conns.discard(conn)
            _close_quietly(conn)


def _close_quietly(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass


def read_line(conn: socket.socket, limit: int = 65536) -> bytes | None:
    """One line without its newline, or None if the peer closed first."""
    data = bytearray()
    while b"\n" not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            return bytes(data) if data else None
        data += chunk
    return bytes(data.split(b"\n", 1)[0]).rstrip(b"\r")


def info_answer(name: str, uuid: str, config: dict[str, str] | None = None, newline: bytes = b"\n",
                eof: bool = True) -> bytes:
    """The bytes a well-behaved peripheral sends for /info (docs/protocol.md §1)."""
    lines = [name, uuid] + [f"{k}={v}" for k, v in (config or {}).items()] + (["EOF"] if eof else [])
    return b"".join(line.encode() + newline for line in lines)


class InfoPeripheral(FakeListener):
    """Answers /info like a real peripheral; any other line is recorded as data. One connection, one request."""

    def __init__(self, name: str = "Fake_Engine", uuid: str | None = None, config: dict[str, str] | None = None,
                 port: int = 0, newline: bytes = b"\n", eof: bool = True, shut_write: bool = False,
                 answer_delay_s: float = 0.0) -> None:
        super().__init__(self._answer, port)
        self.answer_delay_s = answer_delay_s  # a busy peripheral on a loaded board: /info answered this late
        self.name = name
        self.uuid = uuid or str(uuidlib.uuid4())
        self.config = dict(config or {})
        self.newline = newline
        self.eof = eof
        self.shut_write = shut_write
        self.info_requests = 0

    def _answer(self, conn: socket.socket, _: FakeListener) -> None:
        while (line := read_line(conn)) is not None:
            text = line.decode("utf-8", "replace")
            if text == "/info":
                with self.lock:
                    self.info_requests += 1
                if self.answer_delay_s and self.stopping.wait(self.answer_delay_s):
                    return
                conn.sendall(info_answer(self.name, self.uuid, self.config, self.newline, self.eof))
                if self.shut_write:
                    conn.shutdown(socket.SHUT_WR)
            else:
                with self.lock:
                    self.lines.append(text)


def _silent(conn: socket.socket, fake: FakeListener) -> None:
    """Accept and never answer, until the prober leaves or the fake stops."""
    conn.settimeout(ACCEPT_POLL_S)
    while not fake.stopping.is_set():
        try:
            if not conn.recv(4096):
                return
        except socket.timeout:
            continue


def _garbage(conn: socket.socket, _: FakeListener) -> None:
    read_line(conn)
    conn.sendall(GARBAGE_ANSWER)


def _stream(conn: socket.socket, fake: FakeListener) -> None:
    """Send forever (never an EOF line) until the prober closes."""
    while not fake.stopping.is_set():
        conn.sendall(STREAM_CHUNK)


def _close_at_once(conn: socket.socket, _: FakeListener) -> None:
    conn.close()


def silent_port(port: int = 0) -> FakeListener:
    """A port that accepts and never says a word."""
    return FakeListener(_silent, port)


def garbage_port(port: int = 0) -> FakeListener:
    """A port that answers /info with binary nonsense."""
    return FakeListener(_garbage, port)


def streaming_port(port: int = 0) -> FakeListener:
    """A port that streams text forever and never ends its answer."""
    return FakeListener(_stream, port)


def closing_port(port: int = 0) -> FakeListener:
    """A port that accepts and closes at once."""
    return FakeListener(_close_at_once, port)


class LineSink(Served):
    """The one sink peripheral of the tests and benchmarks: records every data line (bytes, newline stripped) with
    the wall-clock time it arrived, and counts connections (one per message in the default delivery mode, one in
    all in stream mode). ``stop()`` then ``start()`` brings it down and up again on the same port.

    By default it serves one connection at a time, so the order lines arrive in is the order sent; ``delay_s``
    makes it slow (a pause per line) and ``backlog`` small makes a slow one refuse connects. ``multiplexed``
    reads every connection in one thread instead, the oldest first when several are readable: a router that
    hands a source over has written everything to its connection before the next router writes, so arrival
    order is delivery order also across connections (stream mode with several routers).
    """

    def __init__(self, port: int = 0, delay_s: float = 0.0, backlog: int = LISTEN_BACKLOG, multiplexed: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.port = port
        self.delay_s = delay_s  # may change while it runs (0: no limit)
        self.clock = clock  # for self.times: time.monotonic to compare with a sender in this process
        self.backlog = backlog
        self.multiplexed = multiplexed
        self.lines: list[bytes] = []
        self.times: list[float] = []  # clock() when each line arrived, beside self.lines
        self.connections = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.listener: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> "LineSink":
        self.stopping.clear()
        serve = self._serve_multiplexed if self.multiplexed else self._serve
        self.listener, self.thread = listen_in_thread("127.0.0.1", self.port, serve, "sink", self.backlog)
        self.port = self.listener.getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the listener and the connections being served; the port refuses connections afterwards."""
        stop_listening(self)

    def count(self) -> int:
        with self.lock:
            return len(self.lines)

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return list(self.lines)

    def arrivals(self) -> list[tuple[bytes, float]]:
        """(line, clock() when it arrived) for every line so far."""
        with self.lock:
            return list(zip(self.lines, self.times))

    def numbers(self) -> list[int]:
        """The leading numbers of numbered lines ("<n>" or "<n> <padding>"), in arrival order; others left out."""
        with self.lock:
            return [int(line.split(b" ", 1)[0]) for line in self.lines if line[:1].isdigit()]

    def _record(self, lines: list[bytes]) -> None:
        now = self.clock()
        with self.lock:
            self.lines.extend(lines)
            self.times.extend([now] * len(lines))

    def _count_connection(self) -> None:
        with self.lock:
            self.connections += 1

    def _serve(self, listener: socket.socket) -> None:
        for conn in accept_until_stopped(listener, self.stopping):
            self._count_connection()
            try:
                self._read_lines(conn)
            except OSError:
                pass
            finally:
                _close_quietly(conn)

    def _read_lines(self, conn: socket.socket) -> None:
        conn.settimeout(ACCEPT_POLL_S)
        pending = b""
        while not self.stopping.is_set():
            try:
                data = conn.recv(65536 if not self.delay_s else 1)
            except socket.timeout:
                continue
            if not data:
                break
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                if line.rstrip(b"\r") == INFO_REQUEST_LINE:
                    # the scanner probing its registered port: not data (it does not answer, so it reads as offline)
                    return
                self._record([line.rstrip(b"\r")])
                if self.delay_s:
                    self.stopping.wait(self.delay_s)
        if pending:
            self._record([pending])

    def _serve_multiplexed(self, listener: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ, None)
            try:
                while not self.stopping.is_set():
                    ready = selector.select(ACCEPT_POLL_S)
                    for key, _ in sorted(ready, key=lambda item: -1 if item[0].data is None else item[0].data[0]):
                        if key.data is None:
                            self._accept_into(listener, selector)
                        else:
                            self._read_ready(selector, key.fileobj, key.data[1])
            finally:
                for key in list(selector.get_map().values()):
                    if key.data is not None:
                        _close_quietly(key.fileobj)

    def _accept_into(self, listener: socket.socket, selector: selectors.BaseSelector) -> None:
        try:
            conn, _ = listener.accept()
        except (socket.timeout, BlockingIOError):
            return
        except OSError:
            self.stopping.set()  # the listener was closed under us: stop() is running
            return
        conn.setblocking(False)
        self._count_connection()
        selector.register(conn, selectors.EVENT_READ, (self.connections, [b""]))

    def _read_ready(self, selector: selectors.BaseSelector, conn: socket.socket, pending: list[bytes]) -> None:
        try:
            chunk = conn.recv(65536 if not self.delay_s else SLOW_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            selector.unregister(conn)
            _close_quietly(conn)
            return
        *lines, pending[0] = (pending[0] + chunk).split(b"\n")
        self._record(lines)
        if self.delay_s and lines:
            self.stopping.wait(self.delay_s * len(lines))  # one budget for every connection; TCP pushes back meanwhile


# ---- peripherals that talk to the orchestrator (docs/protocol.md §2-3) ---------------------------------
ACK_RECV_BYTES = 1024  # real peripherals read the /ack with one recv(1024)


class SinkPeripheral(InfoPeripheral):
    """Answers /info; records each connection's other lines separately (the per-message delivery check)."""

    def __init__(self, name: str = "Fake_Sink", uuid: str | None = None, config: dict[str, str] | None = None,
                 port: int = 0) -> None:
        super().__init__(name, uuid, config, port)
        self.per_connection: list[list[str]] = []

    def _answer(self, conn: socket.socket, _: FakeListener) -> None:
        mine: list[str] = []
        with self.lock:
            self.per_connection.append(mine)
        while (line := read_line(conn)) is not None:
            text = line.decode("utf-8", "replace")
            if text == "/info":
                with self.lock:
                    self.info_requests += 1
                conn.sendall(info_answer(self.name, self.uuid, self.config))
                continue
            with self.lock:
                mine.append(text)
                self.lines.append(text)

    def received(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def connections_with_data(self) -> list[list[str]]:
        with self.lock:
            return [list(lines) for lines in self.per_connection if lines]


def register(orch_port: int, name: str, uuid: str, own_port: int, host: str = "127.0.0.1",
             timeout: float = CONNECTION_TIMEOUT_S) -> str:
    """Register like a real peripheral: one line, one recv(1024) for the ack; returns what that recv got."""
    with socket.create_connection((host, orch_port), timeout=timeout) as sock:
        sock.sendall(f"/register {name} {uuid} {own_port}\n".encode())
        return sock.recv(ACK_RECV_BYTES).decode("utf-8", "replace")


def send_and_close(orch_port: int, data: bytes, host: str = "127.0.0.1", timeout: float = CONNECTION_TIMEOUT_S) -> None:
    """Write and close at once without reading (how most peripherals send /data and /exit <uuid>)."""
    with socket.create_connection((host, orch_port), timeout=timeout) as sock:
        sock.sendall(data)


class RegisteringPeripheral(SinkPeripheral):
    """A peripheral that registers itself, then sends data by /data (a connection per message) or its data port."""

    def __init__(self, orch_port: int, name: str = "Fake_Source", uuid: str | None = None,
                 host: str = "127.0.0.1") -> None:
        super().__init__(name, uuid)
        self.orch_port = orch_port
        self.orch_host = host
        self.data_port: int | None = None

    def register(self) -> int:
        """Start listening if needed, register, and remember the data port from the ack."""
        if self.listener is None:
            self.start()
        ack = register(self.orch_port, self.name, self.uuid, self.port, self.orch_host)
        word, _, port = ack.strip().partition(" ")
        if word != "/ack" or not port.isdigit():
            raise RuntimeError(f"unexpected answer to /register: {ack!r}")
        self.data_port = int(port)
        return self.data_port

    def send_data(self, payload: str) -> None:
        """`/data <uuid> <payload>` on a fresh connection, closed without reading."""
        send_and_close(self.orch_port, f"/data {self.uuid} {payload}\n".encode(), self.orch_host)

    def send_on_data_port(self, payloads: list[str], port: int | None = None) -> None:
        """The data-port protocol: uuid line, then one payload per line, then close."""
        target = port or self.data_port
        if target is None:
            raise RuntimeError("register first (no data port)")
        body = "".join(f"{p}\n" for p in payloads)
        send_and_close(target, f"{self.uuid}\n{body}".encode(), self.orch_host)

    def exit(self) -> None:
        """`/exit <uuid>`, as the terminal-input peripheral sends when it quits."""
        send_and_close(self.orch_port, f"/exit {self.uuid}\n".encode(), self.orch_host)


# ---- sinks that misbehave (isolation tests and the fault bench) ---------------------------------
DEAF_RCVBUF_BYTES = 4096  # a sink that never reads: its kernel buffer fills fast
DEAF_MAX_CONNECTIONS = 32  # then it stops accepting: its backlog fills and connects hang
DEAF_BACKLOG = 1


class DeafSink(Served):
    """Accepts connections and never reads from them; after DEAF_MAX_CONNECTIONS it stops accepting.

    In stream mode the router's write blocks once the buffers are full; in message mode the first
    connections "succeed" into the kernel buffers, then connects hang on the full backlog.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> "DeafSink":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DEAF_RCVBUF_BYTES)  # inherited by accepted sockets
        listener.bind(("127.0.0.1", self.port))
        listener.listen(DEAF_BACKLOG)
        listener.settimeout(ACCEPT_POLL_S)
        self.listener, self.port = listener, listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, args=(listener,), name=f"deaf-{self.port}", daemon=True)
        self.thread.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        for conn in accept_until_stopped(listener, self.stopping, lambda: len(self.conns) < DEAF_MAX_CONNECTIONS):
            self.conns.append(conn)

    def stop(self) -> None:
        stop_listening(self)  # type: ignore[arg-type]
        for conn in self.conns:
            _close_quietly(conn)
        self.conns.clear()


def _reset_at_once(conn: socket.socket, _: FakeListener) -> None:
    """Abort the connection (RST, not FIN): the writer's next write fails."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def resetting_port(port: int = 0, backlog: int = LISTEN_BACKLOG) -> FakeListener:
    """A sink that refuses its data: accepts, then resets each connection at once. (A backlog too small for the
    connects it gets makes it a slow sink too: the kernel drops SYNs and connects wait for TCP's 1 s retries.)"""
    return FakeListener(_reset_at_once, port, backlog=backlog)


def slow_reader(port: int = 0, lines_per_s: float = 1.0, backlog: int = LISTEN_BACKLOG) -> LineSink:
    """A sink that reads one line per 1/lines_per_s seconds, one connection at a time (backlog=1: and refuses to queue
    more connects)."""
    return LineSink(port, delay_s=1.0 / lines_per_s, backlog=backlog)


def restarted(sink: LineSink) -> bool:
    """Bind again (a retrying connect may hold the port for an instant)."""
    try:
        sink.start()
    except OSError:
        return False
    return True
