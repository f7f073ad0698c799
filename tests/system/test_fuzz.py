"""Hostile input at every door of one running instance: nothing crashes, memory stays bounded, files stay valid.

Random bytes and random command lines go to the command port and a data port; random frames
(garbage, and well-formed envelopes with random fields) and random transport bytes go to every
bus socket. After each test: /help still answers, orch.cf and routes.cf still validate, every
actor still runs with the pid it started with, and no process grew past the memory bound.
Generated commands never create routes, so nothing is ever delivered to a port we did not open.
"""
from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.gateway.text.handlers import build_registry
from actors.core.protocol import SCHEMA_VERSION, MessageType, Topic
from actors.core.settings import validate_config, validate_routes
from tests.support.instances import Instance, start_instance, wait_until

TCP_EXAMPLES = 100
BUS_EXAMPLES = 100
CONNECT_TIMEOUT_S = 5.0
PROBE_TOPIC = b"fuzz-probe"
EXAMPLE_DEADLINE = timedelta(seconds=5)
READ_TIMEOUT_S = 2.0
SLOT_RETURN_TIMEOUT_S = 10.0
RSS_LIMIT_KB = 160 * 1024  # no process of the instance may exceed this resident size
RSS_GROWTH_LIMIT_KB = 40 * 1024  # nor grow by more than this over the whole module
ROUTE_MAKING = {("/routes", "add"), ("/routes", "edit")}  # would deliver to random ports
STREAMING = {("/tap",)}  # streams until the client closes: slow, and tested in test_tap.py
BUS_SOCKETS = ("events_in", "state_front", "data", "control")

FUZZ = settings(max_examples=TCP_EXAMPLES, deadline=EXAMPLE_DEADLINE, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BUS_FUZZ = settings(FUZZ, max_examples=BUS_EXAMPLES)


# ---- the instance and its health ------------------------------------------------------
def rss_kb(pid: int) -> int:
    """Resident memory of a process from /proc, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class Fuzzed:
    """The instance under attack, with the pids and memory it started with."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.pids = self.current_pids()
        self.baseline = {name: rss_kb(pid) for name, pid in self.pids.items()}
        self.context = zmq.Context()

    def current_pids(self) -> dict[str, int]:
        children = {c["name"]: c["pid"] for c in self.instance.status()["children"] if c["state"] == "running"}
        return {**children, "supervisor": self.instance.process.pid}

    def open_slots(self) -> int:
        """Connections the gateway holds, not counting the one asking."""
        return json.loads(self.instance.command("/status"))["Gateway"]["connections_open"] - 1

    def assert_intact(self) -> None:
        """/help answers, no connection slot leaked, the files validate, nobody restarted, memory bounded."""
        assert self.instance.command("/help").startswith("Available commands:")
        wait_until(lambda: self.open_slots() == 0, SLOT_RETURN_TIMEOUT_S, message="every connection slot given back")
        validate_config(self.instance.read_json("orch.cf"))
        validate_routes(self.instance.read_json("routes.cf"))
        assert self.current_pids() == self.pids, "an actor crashed and was restarted"
        for name, pid in self.pids.items():
            used = rss_kb(pid)
            assert used < RSS_LIMIT_KB, f"{name} uses {used} KiB"
            assert used - self.baseline[name] < RSS_GROWTH_LIMIT_KB, f"{name} grew from {self.baseline[name]} to {used} KiB"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    instance = start_instance(tmp_path_factory.mktemp("fuzz"))
    target = None
    try:
        target = Fuzzed(instance)
        yield target
    finally:
        if target is not None:
            target.context.destroy(linger=0)
        instance.stop()


def talk(port: int, data: bytes) -> bytes:
    """Send, half-close, read until the gateway closes (or a bounded wait ends); a reset is an answer too."""
    chunks: list[bytes] = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        pass
    return b"".join(chunks)


# ---- strategies -----------------------------------------------------------------------
def command_words() -> list[str]:
    """Every registered command except those that would make routes or stream forever."""
    words = {c.words for c in build_registry().commands.values()} - ROUTE_MAKING - STREAMING
    return sorted(" ".join(w) for w in words)


arg = st.one_of(st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=24),
                st.integers(-1, 70000).map(str), st.uuids().map(str), st.sampled_from(["EOF", "{", "}", "/", "-", "0", "²", "٣", str(1 << 64)]))
command_line = st.builds(lambda word, args: " ".join([word, *args]), st.sampled_from(command_words()), st.lists(arg, max_size=4))
junk_value = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=True) | st.text(max_size=16) | st.binary(max_size=16),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# Well-formed envelopes (right type tag and version) with random fields: they get past msgpack and into field checks.
envelope = st.builds(lambda kind, fields: msgpack.packb({**fields, "type": kind, "v": SCHEMA_VERSION}, use_bin_type=True),
                     st.sampled_from([m.value for m in MessageType]), st.dictionaries(
                         st.sampled_from(["op", "args", "req_id", "actor", "stats", "epoch", "seq", "kind", "key", "value",
                                          "source", "payloads", "received_at", "ok", "result", "error", "code", "text", "pid"]),
                         junk_value, max_size=8))
frame = st.one_of(st.binary(max_size=512), envelope, junk_value.map(lambda v: msgpack.packb(v, use_bin_type=True)))
topic = st.one_of(st.sampled_from([t.value for t in Topic]), st.binary(max_size=12))


# ---- the gateway's TCP ports ----------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=4096))
def fuzz_command_bytes(fuzzed: Fuzzed, data: bytes) -> None:
    talk(fuzzed.instance.command_port, data)


def test_the_command_port_survives_random_bytes(fuzzed: Fuzzed) -> None:
    fuzz_command_bytes(fuzzed)
    fuzzed.assert_intact()


@FUZZ
@given(lines=st.lists(command_line, min_size=1, max_size=5))
def fuzz_command_lines(fuzzed: Fuzzed, lines: list[str]) -> None:
    talk(fuzzed.instance.command_port, "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass"))


def test_the_command_port_survives_random_command_lines(fuzzed: Fuzzed) -> None:
    fuzz_command_lines(fuzzed)
    fuzzed.assert_intact()


@FUZZ
@given(lines=st.lists(command_line, min_size=1, max_size=5))
def fuzz_hit_and_run(fuzzed: Fuzzed, lines: list[str]) -> None:
    """Send and close at once without reading: the client is gone while its commands are still being answered."""
    with socket.create_connection(("127.0.0.1", fuzzed.instance.command_port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall("".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass"))


def test_clients_that_hang_up_at_once_leak_no_connection_slot(fuzzed: Fuzzed) -> None:
    fuzz_hit_and_run(fuzzed)
    fuzzed.assert_intact()


@FUZZ
@given(first=st.one_of(st.uuids().map(lambda u: str(u).encode()), st.binary(max_size=64)), data=st.binary(max_size=4096))
def fuzz_data_bytes(fuzzed: Fuzzed, first: bytes, data: bytes) -> None:
    talk(fuzzed.instance.data_ports[0], first + b"\n" + data)


def test_a_data_port_survives_random_bytes(fuzzed: Fuzzed) -> None:
    fuzz_data_bytes(fuzzed)
    fuzzed.assert_intact()


# ---- the bus --------------------------------------------------------------------------
def fuzz_socket(fuzzed: Fuzzed, endpoint_name: str) -> zmq.Socket:
    """A socket that can send anything to that endpoint: PUB into the broker's XSUB, DEALER into the ROUTERs."""
    endpoint = getattr(fuzzed.instance.runtime.endpoints, endpoint_name)
    sock = fuzzed.context.socket(zmq.PUB if endpoint_name == "events_in" else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.connect(endpoint)
    if endpoint_name == "events_in":
        wait_connected(fuzzed, sock)
    return sock


def wait_connected(fuzzed: Fuzzed, pub: zmq.Socket) -> None:
    """A PUB drops what it sends before its connection is up: send a probe until it comes back through the broker."""
    sub = fuzzed.context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, PROBE_TOPIC)
    sub.connect(fuzzed.instance.runtime.endpoints.events_out)
    try:
        def probe_seen() -> bool:
            pub.send_multipart([PROBE_TOPIC, b""])
            return bool(sub.poll(100))
        wait_until(probe_seen, CONNECT_TIMEOUT_S, 0.0, "the fuzzing publisher to reach the broker")
    finally:
        sub.close(linger=0)


@pytest.mark.parametrize("endpoint_name", BUS_SOCKETS)
def test_every_bus_socket_survives_random_frames(fuzzed: Fuzzed, endpoint_name: str) -> None:
    sock = fuzz_socket(fuzzed, endpoint_name)

    @BUS_FUZZ
    @given(head=topic, frames=st.lists(frame, min_size=0, max_size=4))
    def send(head: bytes, frames: list[bytes]) -> None:
        parts = [head, *frames] if endpoint_name == "events_in" else [b"", *frames] if frames else [head]
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected yet or full: PUB/DEALER drop, and so do we

    try:
        send()
    finally:
        sock.close(linger=0)
    if endpoint_name == "state_front":
        log = fuzzed.instance.config_dir / "logs" / "state.log"
        wait_until(lambda: "malformed request" in log.read_text(errors="replace"), message="the garbage to reach the state keeper")
    fuzzed.assert_intact()


@pytest.mark.parametrize("endpoint_name", BUS_SOCKETS)
def test_every_bus_socket_survives_random_transport_bytes(fuzzed: Fuzzed, endpoint_name: str) -> None:
    endpoint = getattr(fuzzed.instance.runtime.endpoints, endpoint_name)
    assert endpoint.startswith("ipc://"), "the default bus is local-only"

    @BUS_FUZZ
    @given(data=st.binary(min_size=1, max_size=2048))
    def send(data: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(READ_TIMEOUT_S)
            raw.connect(endpoint[len("ipc://"):])
            try:
                raw.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # zmq hung up on the bad greeting: that is the right answer

    send()
    fuzzed.assert_intact()


def test_memory_figures_are_reported(fuzzed: Fuzzed, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a check: prints RSS per process (baseline -> now) for the closing note (`pytest -s`)."""
    figures: dict[str, Any] = {name: f"{fuzzed.baseline[name]} -> {rss_kb(pid)} KiB" for name, pid in fuzzed.pids.items()}
    with capsys.disabled():
        print("\nfuzz RSS:", json.dumps(figures))
