"""Unit tests of the legacy text protocol: line parsing, command handlers against a fake context, the data plane."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import pytest

from actors.gateway.commands import (UNKNOWN_COMMAND, BadLine, CommandLine, ConfigBlock, DataLine, LineSession, Peer, apply_config_block,
                             build_registry)
from actors.gateway.dataplane import PENDING_LIMIT_PER_SOURCE, DataPlane, RouterBusy, RouterGone, rendezvous
from actors.core.errors import DuplicateRoute, Unavailable, UnknownPeripheral, UnknownRoute
from actors.core.protocol import DataBatch, Op, decode
from actors.core.replica import StateReplica
from actors.core.settings import HEARTBEAT_EXPIRY_S

UUID_A = "aaaaaaaa-0000-4000-8000-000000000001"
UUID_B = "bbbbbbbb-0000-4000-8000-000000000002"


# ---- LineSession --------------------------------------------------------------------
def command_session() -> LineSession:
    return LineSession(data_port=False, max_config_bytes=1000)


def test_data_command_payload_is_everything_after_the_second_space() -> None:
    item = command_session().feed(f"/data {UUID_A} hello  world {{\"k\": 1}}".encode())
    assert item == DataLine(UUID_A, b'hello  world {"k": 1}')


def test_data_command_accepts_crlf() -> None:
    assert command_session().feed(f"/data {UUID_A} hi\r".encode()) == DataLine(UUID_A, b"hi")


def test_data_command_without_payload_is_invalid() -> None:
    item = command_session().feed(f"/data {UUID_A}".encode())
    assert isinstance(item, BadLine) and item.reply.text == "Invalid data command format."


def test_invalid_utf8_is_a_bad_line_not_a_crash() -> None:
    for raw in (b"/help \xff\xfe", f"/data {UUID_A} \xff".encode("latin-1")):
        item = command_session().feed(raw)
        assert isinstance(item, BadLine) and "UTF-8" in item.reply.text


def test_blank_lines_are_ignored() -> None:
    assert command_session().feed(b"   ") is None


def test_data_port_first_line_is_the_uuid_then_payloads() -> None:
    session = LineSession(data_port=True, max_config_bytes=1000)
    assert session.feed(UUID_A.encode()) is None
    assert session.feed(b"first") == DataLine(UUID_A, b"first")
    assert session.feed(b"/looks like a command") == DataLine(UUID_A, b"/looks like a command")


def test_data_port_first_line_with_slash_makes_a_command_connection() -> None:
    session = LineSession(data_port=True, max_config_bytes=1000)
    assert session.feed(b"/register X " + UUID_A.encode() + b" 7000") == CommandLine(f"/register X {UUID_A} 7000")
    assert session.feed(b"/help") == CommandLine("/help")


def test_config_block_collects_until_eof() -> None:
    session = command_session()
    assert session.feed(f"/config {UUID_A}".encode()) is None
    assert session.feed(b'{"a": 1,') is None
    assert session.feed(b'"b": "x"}') is None
    assert session.feed(b"EOF") == ConfigBlock(UUID_A, '{"a": 1,\n"b": "x"}')
    assert session.feed(b"/help") == CommandLine("/help")


def test_config_block_is_bounded() -> None:
    session = LineSession(data_port=False, max_config_bytes=10)
    session.feed(f"/config {UUID_A}".encode())
    item = session.feed(b"x" * 20)
    assert isinstance(item, BadLine) and item.reply.close


# ---- the registry against a fake context ----------------------------------------------
class FakeContext:
    """A CommandContext whose state keeper is a dict of canned answers, recording every request."""

    def __init__(self, answers: dict[Op, Any] | None = None) -> None:
        self.replica = StateReplica()
        self.replica.load_snapshot({"epoch": "e", "seq": 0, "config": {"script_uuid": "u"}, "peripherals": [], "routes": []})
        self.answers = answers or {}
        self.requests: list[tuple[Op, dict[str, Any]]] = []

    def add_peripheral(self, name: str, uuid: str, port: int = 7000) -> None:
        self.replica.peripherals[uuid] = {"name": name, "uuid": uuid, "port": port, "last_seen": 0, "online": True}

    async def request(self, op: Op, **args: Any) -> Any:
        self.requests.append((op, args))
        answer = self.answers.get(op)
        if isinstance(answer, Exception):
            raise answer
        return answer(args) if callable(answer) else answer

    async def settle(self, done: Callable[[StateReplica], bool]) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"UUID": "u", "Routes": 0}


def run(line: str, ctx: FakeContext, peer: Peer = Peer()) -> str:
    return asyncio.run(build_registry().dispatch(line, ctx, peer)).text


def test_help_lists_every_registered_command() -> None:
    text = run("/help", FakeContext())
    assert text.startswith("Available commands:")
    for word in ("/help", "/list or /available", "/register", "/data", "/config", "/status", "/reset", "/exit", "/routes", "/delivery", "/remove"):
        assert word in text


def test_routes_help_lists_subcommands() -> None:
    text = run("/routes help", FakeContext())
    assert text.startswith("Routes command usage:")
    for sub in ("add", "edit", "remove", "info", "help"):
        assert f"/routes {sub}" in text


def test_unknown_command_gets_the_documented_line() -> None:
    assert run("/frobnicate", FakeContext()) == UNKNOWN_COMMAND
    assert run("hello", FakeContext()) == UNKNOWN_COMMAND


def test_routes_without_or_with_unknown_subcommand() -> None:
    assert run("/routes", FakeContext()) == "Invalid routes command. Type '/routes help' for usage."
    assert run("/routes fly", FakeContext()) == "Unknown routes command. Type '/routes help' for usage."


def test_wrong_argument_count_answers_usage() -> None:
    assert run("/routes add only-one", FakeContext()).startswith("Usage: /routes add <route-name>")


def test_register_answers_ack_and_passes_remote_host() -> None:
    ctx = FakeContext({Op.REGISTER: lambda args: {"name": args["name"], "uuid": args["uuid"], "data_port": 6042}})
    reply = asyncio.run(build_registry().dispatch(f"/register Foo {UUID_A} 7000", ctx, Peer("10.0.0.5", 4000, admin=False)))
    assert reply.wire() == b"/ack 6042\n"
    assert ctx.requests == [(Op.REGISTER, {"name": "Foo", "uuid": UUID_A, "port": 7000, "host": "10.0.0.5", "admin": False,
                                           "this_machine": False})]


def test_register_from_loopback_records_the_exact_address_too() -> None:
    """127.0.0.1 and 127.0.0.2 are different hosts: a local registration names its address like any other."""
    ctx = FakeContext({Op.REGISTER: {"data_port": 1}})
    run(f"/register Foo {UUID_A} 7000", ctx, Peer("127.0.0.2", 1, admin=False))
    assert (ctx.requests[0][1]["host"], ctx.requests[0][1]["this_machine"]) == ("127.0.0.2", True)


def test_register_errors_keep_the_original_wording() -> None:
    assert run("/register Foo", FakeContext()) == "Invalid register command format."
    assert run(f"/register Foo {UUID_A} seventy", FakeContext()) == "Port must be an integer."


def test_routes_add_unknown_peripheral_names_which_end() -> None:
    ctx = FakeContext()
    ctx.add_peripheral("In", UUID_A)
    assert run("/routes add r In Out", ctx) == "Outgoing peripheral 'Out' not found."
    assert run("/routes add r Nope In", ctx) == "Incoming peripheral 'Nope' not found."
    assert ctx.requests == []


def test_routes_add_duplicate_and_success() -> None:
    ctx = FakeContext({Op.ADD_ROUTE: {"name": "r"}})
    ctx.add_peripheral("In", UUID_A)
    ctx.add_peripheral("Out", UUID_B)
    assert run("/routes add r In Out", ctx) == "Route 'r' added successfully."
    ctx.answers[Op.ADD_ROUTE] = DuplicateRoute("route 'r' already exists")
    assert run("/routes add r In Out", ctx) == "Route 'r' already exists."


def test_routes_remove_missing_route() -> None:
    ctx = FakeContext({Op.REMOVE_ROUTE: UnknownRoute("no route named 'r'")})
    assert run("/routes remove r", ctx) == "Route 'r' not found."


def test_routes_info_shows_counters_and_rate() -> None:
    ctx = FakeContext()
    ctx.add_peripheral("In", UUID_A)
    ctx.add_peripheral("Out", UUID_B)
    ctx.replica.routes["r"] = {"name": "r", "incoming": UUID_A, "outgoing": UUID_B, "incoming_port": 1, "outgoing_port": 2,
                               "last_used": None, "messages": 12, "bytes": 340, "dropped": 1, "rate": 2.5}
    text = run("/routes info", ctx)
    assert "Route Name: r" in text and "From: In" in text and "To: Out" in text and "Last Used: Never" in text
    assert "Messages: 12, Bytes: 340, Dropped: 1, Rate: 2.5 msg/s" in text


def test_list_without_peripherals() -> None:
    assert run("/list", FakeContext()) == "No peripherals discovered."
    assert run("/available", FakeContext()) == "No peripherals discovered."


def test_exit_plain_closes_and_exit_uuid_marks_offline() -> None:
    ctx = FakeContext({Op.LOST: {"name": "Foo"}})
    plain = asyncio.run(build_registry().dispatch("/exit", ctx))
    assert plain.close and plain.text == "Exiting command mode."
    assert run(f"/exit {UUID_A}", ctx) == "Foo marked offline."
    assert ctx.requests == [(Op.LOST, {"uuid": UUID_A, "host": "", "admin": True})]


def test_delivery_and_remove_send_their_ops() -> None:
    ctx = FakeContext({Op.SET_DELIVERY: {"name": "Sink", "uuid": UUID_B},
                       Op.REMOVE_PERIPHERAL: {"peripheral": {"uuid": UUID_B}, "removed_routes": ["r"]}})
    assert run("/delivery Sink stream", ctx) == "Delivery for 'Sink' set to stream."
    assert run("/remove Sink", ctx) == "Peripheral 'Sink' removed (routes removed: r)."
    assert [op for op, _ in ctx.requests] == [Op.SET_DELIVERY, Op.REMOVE_PERIPHERAL]
    ctx.answers[Op.REMOVE_PERIPHERAL] = UnknownPeripheral("no peripheral named 'Sink'")
    assert run("/remove Sink", ctx) == "Peripheral 'Sink' not found."


def test_state_keeper_unavailable_is_an_error_line() -> None:
    ctx = FakeContext({Op.RESET: Unavailable("no answer")})
    assert run("/reset", ctx).startswith("Error: no answer")


def test_status_is_json() -> None:
    assert json.loads(run("/status", FakeContext()))["UUID"] == "u"


def test_config_block_stores_json_object() -> None:
    ctx = FakeContext({Op.SET_PERIPHERAL_CONFIG: {"name": "Foo"}})
    reply = asyncio.run(apply_config_block(ConfigBlock(UUID_A, '{"a": 1}'), ctx))
    assert reply.text == "Config stored for Foo."
    assert ctx.requests == [(Op.SET_PERIPHERAL_CONFIG, {"uuid": UUID_A, "config": {"a": 1}, "host": "", "admin": True})]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_config_block_rejects_non_objects(text: str) -> None:
    ctx = FakeContext()
    reply = asyncio.run(apply_config_block(ConfigBlock(UUID_A, text), ctx))
    assert reply.code and reply.text.startswith("Error:") and ctx.requests == []


# ---- the data plane -----------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRouters:
    """Records (router, DataBatch) sends; can pretend a router is busy or gone."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, DataBatch]] = []
        self.busy: set[bytes] = set()
        self.gone: set[bytes] = set()

    def __call__(self, router: bytes, body: bytes) -> None:
        if router in self.busy:
            raise RouterBusy()
        if router in self.gone:
            raise RouterGone()
        self.sent.append((router, decode(body)))


def make_plane() -> tuple[DataPlane, FakeRouters, Clock]:
    routers, clock = FakeRouters(), Clock()
    return DataPlane(routers, clock), routers, clock


def test_payloads_are_numbered_per_source_from_one() -> None:
    plane, routers, _ = make_plane()
    plane.heard(b"router-1")
    plane.submit(UUID_A, [b"a", b"b"])
    plane.submit(UUID_A, [b"c"])
    plane.submit(UUID_B, [b"x"])
    batches = [(b.source, b.seq, b.payloads) for _, b in routers.sent]
    assert batches == [(UUID_A, 1, [b"a", b"b"]), (UUID_A, 3, [b"c"]), (UUID_B, 1, [b"x"])]


def test_without_routers_payloads_wait_bounded_then_flow_in_order() -> None:
    plane, routers, _ = make_plane()
    plane.submit(UUID_A, [b"%d" % i for i in range(PENDING_LIMIT_PER_SOURCE + 5)])
    assert routers.sent == [] and plane.stats()["dropped_buffer_full"] == 5
    plane.heard(b"router-1")
    while plane.stats()["pending"]:  # the flow window lets more go as the router acknowledges
        plane.ack(UUID_A, routers.sent[-1][1].seq + len(routers.sent[-1][1].payloads) - 1)
    payloads = [p for _, batch in routers.sent for p in batch.payloads]
    assert payloads == [b"%d" % i for i in range(PENDING_LIMIT_PER_SOURCE)]
    assert plane.stats()["pending"] == 0


def source_preferring(router: bytes, routers: list[bytes]) -> str:
    """A source uuid that rendezvous hashing sends to router when all of routers live."""
    return next(s for s in (f"{i:08d}-0000-4000-8000-000000000000" for i in range(1000)) if rendezvous(s, routers) == router)


def test_source_stays_on_its_router_until_drained_then_switches() -> None:
    plane, routers, _ = make_plane()
    source = source_preferring(b"r2", [b"r1", b"r2"])
    plane.heard(b"r1")
    plane.submit(source, [b"1"])
    plane.heard(b"r2")
    plane.submit(source, [b"2"])
    assert [r for r, _ in routers.sent] == [b"r1"]  # held while r1 has an unacked batch
    plane.ack(source, 1)
    assert [(r, b.seq) for r, b in routers.sent] == [(b"r1", 1), (b"r2", 2)]


def test_drain_times_out_when_the_old_router_never_acks() -> None:
    plane, routers, clock = make_plane()
    source = source_preferring(b"r2", [b"r1", b"r2"])
    plane.heard(b"r1")
    plane.submit(source, [b"1"])
    plane.heard(b"r2")
    plane.submit(source, [b"2"])
    assert len(routers.sent) == 1
    clock.now += HEARTBEAT_EXPIRY_S / 2
    plane.heard(b"r1")
    plane.heard(b"r2")
    clock.now += HEARTBEAT_EXPIRY_S
    plane.heard(b"r1")
    plane.heard(b"r2")
    plane.flush()
    assert [(r, b.seq) for r, b in routers.sent] == [(b"r1", 1), (b"r2", 1), (b"r2", 2)]  # unacked batch goes along
    assert plane.stats()["forced_switches"] == 1


def test_dead_router_is_forgotten_and_its_sources_move() -> None:
    plane, routers, clock = make_plane()
    plane.heard(b"r1")
    plane.submit(UUID_A, [b"1"])
    clock.now += HEARTBEAT_EXPIRY_S + 1
    assert plane.expire() == [b"r1"]
    plane.heard(b"r2")
    plane.submit(UUID_A, [b"2"])
    assert [(r, b.seq) for r, b in routers.sent] == [(b"r1", 1), (b"r2", 1), (b"r2", 2)]  # resent before the newer one
    assert plane.stats()["unacked_batches"] == 2


def test_busy_or_gone_router_holds_payloads() -> None:
    plane, routers, _ = make_plane()
    plane.heard(b"r1")
    routers.busy.add(b"r1")
    plane.submit(UUID_A, [b"1"])
    assert plane.stats()["pending"] == 1
    routers.busy.clear()
    plane.flush()
    assert [b.seq for _, b in routers.sent] == [1]
    routers.gone.add(b"r1")
    plane.submit(UUID_A, [b"2"])
    assert plane.live() == [] and plane.stats()["pending"] == 1


def test_acks_release_kept_batches() -> None:
    plane, _, _ = make_plane()
    plane.heard(b"r1")
    plane.submit(UUID_A, [b"1", b"2"])
    plane.submit(UUID_A, [b"3"])
    plane.ack(UUID_A, 2)
    assert plane.stats()["unacked_batches"] == 1 and plane.stats()["payloads_acked"] == 2
