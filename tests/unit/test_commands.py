"""Unit tests of the legacy text protocol: line parsing, command handlers against a fake context."""
from __future__ import annotations

import asyncio
import json

import pytest

from actors.gateway.text.handlers import apply_config_block, build_registry
from actors.gateway.text.registry import Peer
from actors.gateway.text.replies import UNKNOWN_COMMAND
from actors.gateway.text.session import BadLine, CommandLine, ConfigBlock, DataLine, LineSession
from actors.core.errors import DuplicateRoute, Unavailable, UnknownPeripheral, UnknownRoute
from actors.core.protocol import Op
from tests.support.fake_gateway import UUID_A, UUID_B, FakeContext, run

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
