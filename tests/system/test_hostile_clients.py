"""Hostile clients against a real gateway: bad input never leaks a connection slot, one address
cannot lock everyone out, idleness is time since the last complete line, and /auth cannot be
brute-forced. Attackers bind to 127.0.0.2 (outside admin_clients); 127.0.0.1 is the admin.
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from actors.gateway.access import AuthGuard, AuthLimits, ConnectionSlots, SlotLimits
from actors.gateway.text.registry import Peer
from actors.gateway.text.replies import TextReply, error
from actors.gateway.text.session import CommandLine, ConfigBlock
from actors.gateway.connection import Connection, Limits
from actors.core.protocol import Op
from actors.core.settings import ConfigError, parse_port, parse_ports
from tests.support.instances import Instance, send_bytes, start_instance, wait_until

GATEWAY_ONLY = ["broker", "state", "gateway"]
ADMIN = "127.0.0.1"
ATTACKER = "127.0.0.2"
BYSTANDER = "127.0.0.3"
TOKEN = "right-token-0815"
MAX_CONNECTIONS = 20
PER_ADDRESS = 5
ADMIN_RESERVED = 4
AUTH_MAX_FAILURES = 5
ATTACK_CONNECTIONS = 700  # the reproduction: this many short connections sending a port int() cannot parse
READ_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 1.0
TRICKLE_INTERVAL_S = 0.2
UUID = "00000000-0000-4000-8000-00000000beef"
# A first line that waits on the state keeper: the client's EOF arrives while the worker is busy, so a
# worker killed by the next line would never close the connection (the slot leaked until idle_timeout).
DECOY = f"/register Decoy {UUID} 7000\n".encode()
ASCII_PORT = re.compile(r"[0-9]{1,5}")
HOSTILE = {"max_connections": MAX_CONNECTIONS, "max_connections_per_address": PER_ADDRESS,
           "admin_reserved_connections": ADMIN_RESERVED, "admin_clients": [ADMIN], "admin_token": TOKEN,
           "auth_max_failures": AUTH_MAX_FAILURES, "auth_failure_delay": 0.01, "auth_lockout": 120, "idle_timeout": 120}
LIVE = settings(max_examples=60, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ---- helpers --------------------------------------------------------------------------
def connect(port: int, source: str = ADMIN) -> socket.socket:
    """A client socket bound to a chosen loopback address (127.0.0.2 plays a non-admin host)."""
    return socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S, source_address=(source, 0))


def talk(port: int, lines: list[str | bytes], source: str = ADMIN) -> str:
    """Send lines, half-close, read until the gateway closes."""
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    return send_bytes(port, data, READ_TIMEOUT_S, source=source)


def hit_and_run(port: int, line: bytes, source: str = ADMIN) -> None:
    """Send one line and close without reading: the client is gone before any answer."""
    with connect(port, source) as sock:
        sock.sendall(line + b"\n")


def gateway_status(instance: Instance) -> dict[str, Any]:
    return json.loads(talk(instance.command_port, ["/status"]))


def open_connections(instance: Instance) -> int:
    """Clients holding a slot, not counting the /status connection asking (-1 while a burst fills every slot)."""
    reply = talk(instance.command_port, ["/status"])
    if reply.startswith("Error: too many connections"):
        return -1
    return json.loads(reply)["Gateway"]["connections_open"] - 1


def gateway_log(instance: Instance) -> str:
    return (instance.config_dir / "logs" / "gateway.log").read_text(errors="replace")


def held_open(stack: ExitStack, port: int, source: str, count: int) -> list[socket.socket]:
    return [stack.enter_context(connect(port, source)) for _ in range(count)]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """A gateway with small limits: 20 slots, 5 per non-admin address, 4 kept for admins, /auth locked after 5 failures."""
    instance = start_instance(tmp_path_factory.mktemp("hostile"), only=GATEWAY_ONLY, config=HOSTILE)
    try:
        yield instance
    finally:
        instance.stop()
    assert "Traceback" not in gateway_log(instance)


@pytest.fixture
def all_slots_free(hostile: Instance) -> Instance:
    """Each test starts (and the previous one must have ended) with no client holding a slot."""
    wait_until(lambda: open_connections(hostile) == 0, timeout=READ_TIMEOUT_S, message="every slot to be free")
    return hostile


# ---- one port parser ------------------------------------------------------------------
@pytest.mark.parametrize("text", ["²", "٣", "0", "65536", "+80", " 80", "8_0", "18446744073709551616", "", "0x50"])
def test_port_parser_refuses_anything_but_ascii_digits_in_range(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_port(text)


@given(st.one_of(st.text(max_size=8), st.text(alphabet=st.characters(categories=["Nd", "No"]), max_size=6),
                 st.integers(min_value=-10, max_value=1 << 70).map(str)))
@example("٣")
@example("²")
def test_port_parser_accepts_exactly_ascii_numbers_from_1_to_65535(text: str) -> None:
    valid = bool(ASCII_PORT.fullmatch(text)) and 1 <= int(text) <= 65535
    try:
        assert parse_port(text) == int(text) and valid
    except ConfigError:
        assert not valid


def test_port_ranges_use_the_same_parser() -> None:
    assert parse_ports("6200-6202,7000") == [6200, 6201, 6202, 7000]
    for spec in ("٣-٥", "6200-６２０１", "0-10", "6000-70000", "²"):
        with pytest.raises(ConfigError):
            parse_ports(spec)


# ---- slots and the auth guard as units ------------------------------------------------
def test_one_address_gets_at_most_its_share_and_admins_keep_a_reserve() -> None:
    slots, limits = ConnectionSlots(), SlotLimits(total=10, per_address=3, admin_reserved=2)
    assert [slots.claim("10.0.0.1", False, limits) is None for _ in range(4)] == [True, True, True, False]
    for host in ("10.0.0.2", "10.0.0.3"):
        for _ in range(3):
            slots.claim(host, False, limits)
    refusal = slots.claim("10.0.0.4", False, limits)
    assert refusal is not None and "non-admin" in refusal.text  # 8 held: the last 2 are the admins'
    assert slots.claim("127.0.0.1", True, limits) is None and slots.claim("127.0.0.1", True, limits) is None
    assert slots.claim("127.0.0.1", True, limits) is not None
    for host in ("10.0.0.1", "127.0.0.1", "127.0.0.1"):
        slots.release(host)
    assert slots.claim("10.0.0.1", False, limits) is None and slots.held == 8


def test_auth_failures_delay_more_and_more_then_lock_the_address_for_a_while() -> None:
    guard = AuthGuard(AuthLimits(max_failures=4, window_s=60.0, lockout_s=300.0, delay_s=0.5))
    delays = [guard.failed("10.0.0.9", now=100.0 + i) for i in range(4)]
    assert delays == sorted(delays) and delays[0] == 0.5 and delays[-1] > delays[0]
    assert guard.locked_for("10.0.0.9", now=110.0) == pytest.approx(293.0)
    assert guard.locked_for("10.0.0.8", now=110.0) == 0.0
    assert guard.locked_for("10.0.0.9", now=404.0) == 0.0 and guard.lockouts == 1


def test_auth_failures_outside_the_window_do_not_add_up() -> None:
    guard = AuthGuard(AuthLimits(max_failures=3, window_s=10.0, lockout_s=300.0, delay_s=0.1))
    for minute in range(10):
        guard.failed("10.0.0.9", now=minute * 60.0)
    assert guard.locked_for("10.0.0.9", now=600.0) == 0.0


# ---- the connection's own safety net ---------------------------------------------------
class FailingHost:
    """A gateway whose every command fails in a way nobody foresaw, after the client already half-closed."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {key: 0 for key in ("connections_total", "bytes_in", "lines_in", "partial_lines_dropped")}
        self.connections: set[Connection] = set()
        self.limits = Limits(max_line_bytes=1 << 16, idle_timeout_s=60.0)
        self.failures: list[Exception] = []
        self.released: list[Peer] = []

    def ingest(self, source: str, payloads: list[bytes], conn: Connection | None = None) -> None:
        raise AssertionError("no data expected")

    async def answer(self, item: CommandLine | ConfigBlock, peer: Peer) -> TextReply:
        await asyncio.sleep(0)  # the client's EOF arrives while the command is being answered
        raise RuntimeError("a bug below the gateway")

    def admit(self, peer_host: str, peer_port: int, local_host: str) -> tuple[Peer, TextReply | None]:
        return Peer(peer_host, peer_port, admin=True), None

    def release_slot(self, peer: Peer) -> None:
        self.released.append(peer)

    def handler_failed(self, exc: Exception, peer: Peer) -> TextReply:
        self.failures.append(exc)
        return error("Error: command failed (RuntimeError); it was not applied")

    async def tap(self, connection: Connection, kind: str, key: str) -> None:
        raise AssertionError("no tap expected")


class RecordingTransport(asyncio.Transport):
    """Just enough of a TCP transport: records what is written and calls connection_lost on close, as asyncio does."""

    def __init__(self, protocol: Connection) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (ATTACKER, 40000), "sockname": (ADMIN, 6000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


def test_an_unforeseen_exception_is_answered_and_the_half_closed_client_frees_its_slot() -> None:
    async def scenario() -> tuple[FailingHost, RecordingTransport]:
        host = FailingHost()
        connection = Connection(host, "command")
        transport = RecordingTransport(connection)
        connection.connection_made(transport)
        connection.data_received(b"/help\n/list\n")
        connection.eof_received()
        for _ in range(100):
            if transport.closed and not host.connections:
                break
            await asyncio.sleep(0)
        return host, transport

    host, transport = asyncio.run(scenario())
    assert transport.written == b"Error: command failed (RuntimeError); it was not applied\n"
    assert [type(exc) for exc in host.failures] == [RuntimeError]
    assert transport.closed and not host.connections and [p.host for p in host.released] == [ATTACKER]


# ---- a real gateway: slots ------------------------------------------------------------
def test_hundreds_of_short_connections_with_a_superscript_port_leak_no_slot(all_slots_free: Instance) -> None:
    instance = all_slots_free
    for _ in range(ATTACK_CONNECTIONS):
        hit_and_run(instance.command_port, DECOY + "/register a U ²".encode())
    # The burst fills the cap for a moment (it comes from the admin address: no per-address cap hides a leak);
    # once the gateway has read it, localhost gets in and no slot stays taken.
    wait_until(lambda: talk(instance.command_port, ["/help"]).startswith("Available commands:"), timeout=READ_TIMEOUT_S,
               message="localhost to get in after the attack")
    wait_until(lambda: open_connections(instance) == 0, timeout=READ_TIMEOUT_S, message="every slot given back")


@pytest.mark.parametrize("line", ["/register a U ²", "/register a U ٣", "/register a U 0", "/register a U 65536",
                                  f"/register a U {1 << 64}", f"/register a U {1 << 70}"])
def test_a_port_that_is_no_port_gets_an_error_line(all_slots_free: Instance, line: str) -> None:
    reply = talk(all_slots_free.command_port, [line, "/help"])
    assert reply.startswith(("Port must be an integer.", "Error: port must be a number from 1 to 65535")), reply
    assert "Available commands:" in reply  # the connection goes on


@pytest.mark.parametrize("body", ["[" * 1000 + "]" * 1000, '{"a": ' * 1000 + "1" + "}" * 1000,
                                  json.dumps({"big": 1 << 64}), json.dumps({"big": -(1 << 70)})])
def test_config_that_a_library_cannot_take_gets_an_error_line_and_frees_the_slot(all_slots_free: Instance, body: str) -> None:
    instance = all_slots_free
    talk(instance.command_port, [f"/register Deep {UUID} 7000"])
    reply = talk(instance.command_port, [f"/config {UUID}", body, "EOF", "/help"])
    assert reply.startswith("Error"), reply[:300]
    assert "Available commands:" in reply
    for _ in range(20):  # the same, from clients that hang up at once
        hit_and_run(instance.command_port, DECOY + f"/config {UUID}\n{body}\nEOF".encode())
    wait_until(lambda: open_connections(instance) == 0, timeout=READ_TIMEOUT_S, message="every slot given back")


def test_unforeseen_failures_are_counted_each_time_and_logged_once_per_address_and_reason(all_slots_free: Instance) -> None:
    instance = all_slots_free
    talk(instance.command_port, [f"/register Deep {UUID} 7000"])
    before = gateway_status(instance)["Gateway"]["handler_errors"]
    body = json.dumps({"huge": 1 << 65})  # valid JSON; too big for the bus encoding (msgpack)
    replies = [talk(instance.command_port, [f"/config {UUID}", body, "EOF"]) for _ in range(5)]
    assert all(r.startswith("Error: command failed (OverflowError)") for r in replies), replies
    assert gateway_status(instance)["Gateway"]["handler_errors"] == before + 5
    wait_until(lambda: "failed with OverflowError" in gateway_log(instance), message="the activity line")
    assert gateway_log(instance).count("failed with OverflowError") == 1


@given(port_text=st.one_of(st.text(min_size=1, max_size=12), st.integers(min_value=-1, max_value=1 << 80).map(str),
                           st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6)))
@LIVE
def test_register_answers_every_port_text_and_acks_only_real_ports(hostile: Instance, port_text: str) -> None:
    if not port_text.strip() or any(ch.isspace() or ch in "\r\n" for ch in port_text):
        return  # would change the number of words: another test's business
    reply = talk(hostile.command_port, [f"/register Shape {UUID} {port_text}"])
    assert reply, "no answer at all"
    if not (ASCII_PORT.fullmatch(port_text) and 1 <= int(port_text) <= 65535):
        assert not reply.startswith("/ack"), (port_text, reply)


def test_one_address_cannot_take_every_slot(all_slots_free: Instance) -> None:
    instance = all_slots_free
    with ExitStack() as stack:
        held_open(stack, instance.command_port, ATTACKER, MAX_CONNECTIONS)  # as many as the whole gateway has
        wait_until(lambda: open_connections(instance) == PER_ADDRESS, timeout=READ_TIMEOUT_S, message="the attacker's share")
        assert talk(instance.command_port, ["/help"], source=BYSTANDER).startswith("Available commands:")
        assert talk(instance.command_port, ["/help"], source=ADMIN).startswith("Available commands:")
        refused = talk(instance.command_port, ["/help"], source=ATTACKER)
        assert refused.startswith(f"Error: too many connections from {ATTACKER} (limit {PER_ADDRESS} per address)")
        assert gateway_status(instance)["Gateway"]["connections_refused_per_address"] >= MAX_CONNECTIONS - PER_ADDRESS
    wait_until(lambda: "connection refused: too many connections from 127.0.0.2" in gateway_log(instance), message="the activity line")


def admin_clients(instance: Instance, networks: list[str]) -> None:
    """Change admin_clients live and wait until the gateway applies it (judged from 127.0.0.1)."""
    instance.state_client().request(Op.SET_CONFIG, values={"admin_clients": networks})
    wanted = "Route 'nothing' not found" if ADMIN in networks else "Error: /routes remove not allowed"
    wait_until(lambda: talk(instance.command_port, ["/routes remove nothing"]).startswith(wanted), message=f"admin_clients {networks}")


@pytest.fixture(params=[[ADMIN], []], ids=["localhost-is-admin", "no-admin-networks"])
def admins(request: pytest.FixtureRequest, all_slots_free: Instance) -> Iterator[Instance]:
    """The instance with 127.0.0.1 as the admin, or with no admin networks at all (this machine still gets in)."""
    if request.param != [ADMIN]:
        admin_clients(all_slots_free, request.param)
    try:
        yield all_slots_free
    finally:
        if request.param != [ADMIN]:
            admin_clients(all_slots_free, [ADMIN])


def test_this_machine_gets_in_when_non_admin_addresses_fill_their_slots(admins: Instance) -> None:
    instance = admins
    attackers = [f"127.0.0.{n}" for n in range(2, 7)]  # 5 addresses x 5 = 25 > the 16 non-admin slots
    with ExitStack() as stack:
        for source in attackers:
            held_open(stack, instance.command_port, source, PER_ADDRESS)
        wait_until(lambda: open_connections(instance) == MAX_CONNECTIONS - ADMIN_RESERVED, timeout=READ_TIMEOUT_S,
                   message="the non-admin slots to fill")
        assert talk(instance.command_port, ["/help"], source="127.0.0.7").startswith("Error: too many connections")
        assert talk(instance.command_port, ["/help"], source=ADMIN).startswith("Available commands:")


# ---- a real gateway: /auth ------------------------------------------------------------
def test_auth_guessing_from_one_address_is_locked_out_and_others_are_not(all_slots_free: Instance) -> None:
    instance = all_slots_free
    replies = [talk(instance.command_port, [f"/auth guess-{n}", "/help"], source=ATTACKER) for n in range(3 * AUTH_MAX_FAILURES)]
    assert all(r.startswith(f"Error: wrong token from {ATTACKER}; closing") for r in replies[:AUTH_MAX_FAILURES]), replies
    assert all(r.startswith(f"Error: /auth from {ATTACKER} locked for") for r in replies[AUTH_MAX_FAILURES:]), replies
    assert all("Available commands" not in r for r in replies)  # every wrong or locked /auth closes the connection
    assert talk(instance.command_port, [f"/auth {TOKEN}", "/reset"], source=ATTACKER).startswith(f"Error: /auth from {ATTACKER} locked")
    assert talk(instance.command_port, [f"/auth {TOKEN}"], source=BYSTANDER).startswith("Authenticated")
    assert talk(instance.command_port, [f"/auth {TOKEN}"], source=ADMIN).startswith("Authenticated")
    status = gateway_status(instance)
    assert ATTACKER in status["Auth Locked"] and BYSTANDER not in status["Auth Locked"]
    assert status["Gateway"]["auth_lockouts"] >= 1 and status["Gateway"]["auth_failures"] >= 3 * AUTH_MAX_FAILURES
    wait_until(lambda: f"/auth locked for {ATTACKER}" in gateway_log(instance), message="the lockout activity line")
    assert TOKEN not in gateway_log(instance)


def test_status_shows_every_gateway_counter_of_bad_input(all_slots_free: Instance) -> None:
    gateway = gateway_status(all_slots_free)["Gateway"]
    for key in ("partial_lines_dropped", "handler_errors", "connections_refused_per_address", "auth_failures", "auth_lockouts"):
        assert isinstance(gateway.get(key), int), key


def test_a_line_cut_off_by_the_client_is_counted_in_status(all_slots_free: Instance) -> None:
    before = gateway_status(all_slots_free)["Gateway"]["partial_lines_dropped"]
    with connect(all_slots_free.command_port) as sock:
        sock.sendall(b"/li")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1024):
            pass
    wait_until(lambda: gateway_status(all_slots_free)["Gateway"]["partial_lines_dropped"] > before, message="the cut line counted")


# ---- idleness -------------------------------------------------------------------------
@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Instance]:
    instance = start_instance(tmp_path, only=GATEWAY_ONLY, config={"idle_timeout": IDLE_TIMEOUT_S})
    try:
        yield instance
    finally:
        instance.stop()


def test_a_client_trickling_bytes_without_a_newline_is_dropped_as_idle(impatient: Instance) -> None:
    deadline = time.monotonic() + IDLE_TIMEOUT_S * 5
    reply = b""
    with connect(impatient.command_port) as sock:
        sock.settimeout(TRICKLE_INTERVAL_S)
        while time.monotonic() < deadline and not reply:
            try:
                sock.sendall(b"x")
                reply = sock.recv(1024)
            except socket.timeout:
                continue
            except OSError:  # reset after the gateway closed: it did hang up
                break
    assert reply.startswith(b"Error: idle for"), reply


def test_a_client_sending_whole_lines_is_not_idle(impatient: Instance) -> None:
    with connect(impatient.command_port) as sock:
        for _ in range(int(IDLE_TIMEOUT_S * 3 / TRICKLE_INTERVAL_S)):
            sock.sendall(b"\n")  # a complete (empty) line: the client is talking
            time.sleep(TRICKLE_INTERVAL_S)
        sock.sendall(b"/list\n")
        assert sock.recv(1024).startswith(b"No peripherals")
