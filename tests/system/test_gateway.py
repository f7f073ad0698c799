"""The command gateway end to end: real processes on loopback, fake peripherals from docs/protocol.md, a fake router on the data plane."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from tests.support.instances import (REPO_ROOT, Instance, free_port, free_port_range, send_line, start_instance,
                                     wait_until)
from tests.support.fakes import RegisteringPeripheral, register, send_and_close

from actors.supervisor.cli import EXIT_UNREACHABLE, run_ctl, send_command
from actors.gateway.text.replies import UNKNOWN_COMMAND
from actors.core.protocol import DataAck, DataBatch, Heartbeat, Op, decode_as, encode

GATEWAY_ONLY = ["broker", "state", "gateway"]
IDLE_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 20
MAX_LINE_BYTES = 64 * 1024
RECV_TIMEOUT_S = 5.0
HUNDREDS = 300


def new_uuid() -> str:
    return str(uuidlib.uuid4())


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Instance]:
    """Broker, state keeper and gateway, with small limits so bad-input cases are quick."""
    instance = start_instance(tmp_path, only=GATEWAY_ONLY, config={"idle_timeout": IDLE_TIMEOUT_S, "max_line_bytes": MAX_LINE_BYTES})
    try:
        yield instance
    finally:
        instance.stop()
    assert_no_traceback(instance)


def assert_no_traceback(instance: Instance) -> None:
    """Nothing may crash inside the gateway, whatever a client did."""
    log_text = (instance.config_dir / "logs" / "gateway.log").read_text()
    assert "Traceback" not in log_text, log_text[log_text.index("Traceback") - 300:][:3000]


class FakeRouter:
    """A DEALER with a router identity on the gateway's data socket: heartbeats, receives batches, acks on demand."""

    def __init__(self, instance: Instance, name: str = "router-test") -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, name.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(instance.runtime.endpoints.data)
        self.name = name
        self.beat()

    def beat(self) -> None:
        self.sock.send(encode(Heartbeat(actor=self.name, pid=0, host="test", started_at=time.time())))

    def batches(self, count: int, timeout: float = RECV_TIMEOUT_S) -> list[DataBatch]:
        """Receive count batches (heartbeating meanwhile so we stay live)."""
        found: list[DataBatch] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(found)} of {count} batches")
            self.beat()
            if self.sock.poll(200):
                found.append(decode_as(self.sock.recv(), DataBatch))
        return found

    def payloads(self, count: int, timeout: float = RECV_TIMEOUT_S) -> list[bytes]:
        got: list[bytes] = []
        while len(got) < count:
            got += [p for batch in self.batches(1, timeout) for p in batch.payloads]
        return got

    def ack(self, source: str, seq: int) -> None:
        self.sock.send(encode(DataAck(source=source, seq=seq)))

    def close(self) -> None:
        self.sock.close()
        self.context.term()


@pytest.fixture
def router(gw: Instance) -> Iterator[FakeRouter]:
    fake = FakeRouter(gw)
    try:
        wait_until(lambda: status(gw)["Routers Alive"] == 1, 5.0, message="the fake router to count as live")
        yield fake
    finally:
        fake.close()


def status(instance: Instance) -> dict[str, Any]:
    return json.loads(instance.command("/status"))


def snapshot(instance: Instance) -> dict[str, Any]:
    return instance.state_client().request(Op.SNAPSHOT)


def assert_files_parse(instance: Instance) -> None:
    for name in ("orch.cf", "routes.cf"):
        instance.read_json(name)


def source_and_sink(instance: Instance, route: str = "r1") -> tuple[RegisteringPeripheral, RegisteringPeripheral]:
    source = RegisteringPeripheral(instance.command_port, "Src")
    sink = RegisteringPeripheral(instance.command_port, "Dst")
    source.register()
    sink.register()
    assert instance.command(f"/routes add {route} Src Dst").strip() == f"Route '{route}' added successfully."
    return source, sink


# ---- commands -----------------------------------------------------------------------
def test_help_lists_the_commands(gw: Instance) -> None:
    reply = gw.command("/help")
    assert reply.startswith("Available commands:\n") and "/routes help" in reply and reply.endswith("\n")


def test_unknown_command_gets_the_documented_line(gw: Instance) -> None:
    assert gw.command("/bogus") == UNKNOWN_COMMAND + "\n"


def test_several_commands_on_one_connection_are_answered_in_order(gw: Instance) -> None:
    reply = send_line(gw.command_port, "/bogus\n/routes info\n/list\n")
    assert reply == f"{UNKNOWN_COMMAND}\nNo routes configured.\nNo peripherals discovered.\n"


def test_register_acks_first_with_a_data_port_from_the_range(gw: Instance) -> None:
    fake = RegisteringPeripheral(gw.command_port, "Foo")
    with fake:
        ack = register(gw.command_port, "Foo", fake.uuid, fake.port)
        assert ack.startswith("/ack ") and ack.endswith("\n") and ack.count("\n") == 1
        assert int(ack.split()[1]) in gw.data_ports


def test_register_and_close_without_reading_still_registers(gw: Instance) -> None:
    uuid = new_uuid()
    send_and_close(gw.command_port, f"/register Quick {uuid} 7001\n".encode())
    wait_until(lambda: uuid in gw.command("/list"), message="the peripheral to be listed")


def test_each_peripheral_gets_its_own_data_port(gw: Instance) -> None:
    ports = {int(register(gw.command_port, f"P{i}", new_uuid(), 7000 + i).split()[1]) for i in range(3)}
    assert len(ports) == 3 and ports <= set(gw.data_ports)


def test_duplicate_names_get_numeric_suffixes(gw: Instance) -> None:
    for port in (7001, 7002, 7003):
        register(gw.command_port, "Twin", new_uuid(), port)
    listing = gw.command("/list")
    assert "Twin (" in listing and "Twin_1 (" in listing and "Twin_2 (" in listing


def test_re_registering_a_uuid_keeps_its_name_and_routes(gw: Instance) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        register(gw.command_port, "Src", source.uuid, 7777)
        listing = gw.command("/list")
        assert listing.count("Src") == 1 and "Port: 7777" in listing
        info = gw.command("/routes info")
        assert "Route Name: r1" in info and "From: Src" in info and "Port: 7777" in info


def test_routes_add_edit_remove_and_their_errors(gw: Instance) -> None:
    for name in ("A", "B", "C"):
        register(gw.command_port, name, new_uuid(), 7000)
    assert gw.command("/routes add r A B") == "Route 'r' added successfully.\n"
    assert gw.command("/routes add r A B") == "Route 'r' already exists.\n"
    assert gw.command("/routes add s A Nobody") == "Outgoing peripheral 'Nobody' not found.\n"
    assert gw.command("/routes edit r A C") == "Route 'r' updated successfully.\n"
    assert "To: C" in gw.command("/routes info")
    assert gw.command("/routes edit nope A C") == "Route 'nope' not found.\n"
    assert gw.command("/routes remove r") == "Route 'r' removed successfully.\n"
    assert gw.command("/routes remove r") == "Route 'r' not found.\n"
    assert gw.command("/routes info") == "No routes configured.\n"
    assert gw.read_json("routes.cf") == []


def test_routes_help(gw: Instance) -> None:
    assert gw.command("/routes help").startswith("Routes command usage:\n/routes add")


def test_config_block_stores_the_peripherals_config(gw: Instance) -> None:
    uuid = new_uuid()
    register(gw.command_port, "Conf", uuid, 7000)
    reply = gw.command(f'/config {uuid}\n{{"model": "small",\n "rate": 16000}}\nEOF\n')
    assert reply == "Config stored for Conf.\n"
    wait_until(lambda: snapshot(gw)["peripherals"][0]["config"] == {"model": "small", "rate": 16000}, message="config stored")
    bad = gw.command(f"/config {uuid}\nnot json\nEOF\n")
    assert bad.startswith("Error: config for") and "/help" not in bad
    assert gw.command(f"/config {new_uuid()}\n{{}}\nEOF\n").startswith("Error: no peripheral")
    assert_files_parse(gw)


def test_exit_with_uuid_marks_the_peripheral_offline(gw: Instance) -> None:
    fake = RegisteringPeripheral(gw.command_port, "Term")
    with fake:
        fake.register()
        fake.stop()  # it quits: its port closes (an open port answering /info would be a sighting: online again)
        fake.exit()
        wait_until(lambda: not snapshot(gw)["peripherals"][0]["online"], message="the peripheral to go offline")
        assert "offline" in gw.command("/list")


def test_plain_exit_ends_the_session(gw: Instance) -> None:
    with socket.create_connection(("127.0.0.1", gw.command_port), timeout=RECV_TIMEOUT_S) as sock:
        sock.sendall(b"/exit\n")
        reply = b""
        while chunk := sock.recv(1024):  # the gateway closes after answering, without our half-close
            reply += chunk
    assert reply == b"Exiting command mode.\n"


def test_status_reports_counts_and_counters(gw: Instance) -> None:
    register(gw.command_port, "S", new_uuid(), 7000)
    result = status(gw)
    assert result["UUID"] == "00000000-0000-4000-8000-000000000000"
    assert result["Peripherals"] == {"online": 1, "total": 1}
    assert result["Routes"] == 0 and result["Routers Alive"] == 0 and result["Last Scan"] == "Never"
    assert result["Gateway"]["lines_in"] >= 1 and "Uptime" in result


def test_delivery_and_remove(gw: Instance) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        assert gw.command("/delivery Dst stream") == "Delivery for 'Dst' set to stream.\n"
        assert gw.command("/delivery Dst pigeon").startswith("Error: delivery mode must be")
        assert gw.command("/remove Dst") == "Peripheral 'Dst' removed (routes removed: r1).\n"
        assert gw.command("/remove Dst") == "Peripheral 'Dst' not found.\n"
        assert "Dst" not in gw.command("/list")


def test_reset_clears_everything_and_files_still_parse(gw: Instance) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        assert gw.command("/reset").startswith("Configuration files reset")
        assert gw.command("/list") == "No peripherals discovered.\n"
        assert gw.command("/routes info") == "No routes configured.\n"
        wait_until(lambda: gw.read_json("routes.cf") == [] and gw.read_json("orch.cf")["peripherals"] == [], message="files reset")
        assert gw.command("/help").startswith("Available commands:")


# ---- data ingress -------------------------------------------------------------------
def test_data_lines_become_batches_for_a_router(gw: Instance, router: FakeRouter) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        source.send_data("hello world {\"json\": true}")
        batch = router.batches(1)[0]
        assert (batch.source, batch.seq, batch.payloads) == (source.uuid, 1, [b'hello world {"json": true}'])
        assert batch.received_at > 0
        source.send_data("second")
        assert router.batches(1)[0].seq == 2


def test_one_connection_per_message_keeps_the_senders_order(gw: Instance, router: FakeRouter) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        for i in range(50):
            source.send_data(f"m{i}")
        assert router.payloads(50) == [f"m{i}".encode() for i in range(50)]


def test_consecutive_lines_of_one_chunk_form_one_batch(gw: Instance, router: FakeRouter) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        lines = "".join(f"/data {source.uuid} line {i}\n" for i in range(5))
        send_and_close(gw.command_port, lines.encode())
        payloads = router.payloads(5)
        assert payloads == [f"line {i}".encode() for i in range(5)]


def test_data_port_protocol_streams_payloads(gw: Instance, router: FakeRouter) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        source.send_on_data_port(["one", "two", "three"])
        assert router.payloads(3) == [b"one", b"two", b"three"]
        source.send_on_data_port(["four"], port=gw.data_ports[-1])  # any data port works
        assert router.payloads(1) == [b"four"]


def test_data_port_with_a_command_first_line_is_a_command_connection(gw: Instance) -> None:
    assert send_line(gw.data_ports[0], "/help").startswith("Available commands:")
    fake = RegisteringPeripheral(gw.data_ports[1], "ViaDataPort")
    with fake:
        assert fake.register() in gw.data_ports


def test_acks_are_accepted_and_sequence_continues(gw: Instance, router: FakeRouter) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        source.send_data("a")
        first = router.batches(1)[0]
        router.ack(source.uuid, first.seq)
        source.send_data("b")
        assert router.batches(1)[0].seq == first.seq + 1
        wait_until(lambda: status(gw)["Gateway"]["pending"] == 0, message="nothing pending")


def test_unknown_source_and_no_route_are_counted(gw: Instance, router: FakeRouter) -> None:
    send_and_close(gw.command_port, f"/data {new_uuid()} lost\n".encode())
    lonely = RegisteringPeripheral(gw.command_port, "Lonely")
    with lonely:
        lonely.register()
        lonely.send_data("nobody listens")
        lonely.send_data("still nobody")
        wait_until(lambda: status(gw)["Gateway"]["no_route"] == 2, message="no-route count")
    result = status(gw)
    assert result["Gateway"]["unknown_source"] == 1 and result["Messages Dropped"] >= 3
    wait_until(lambda: "lines from unknown sources" in (gw.config_dir / "logs" / "gateway.log").read_text(), 10.0,
               message="the rate-limited activity line")


def test_without_a_router_data_waits_then_flows(gw: Instance) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        source.send_data("early")
        wait_until(lambda: status(gw)["Gateway"]["pending"] == 1, message="the payload to wait")
        late = FakeRouter(gw, "router-late")
        try:
            assert late.payloads(1) == [b"early"]
        finally:
            late.close()


# ---- bad input ----------------------------------------------------------------------
def test_too_long_line_gets_an_error_and_the_connection_closes(gw: Instance) -> None:
    reply = send_line(gw.command_port, b"/help " + b"x" * (MAX_LINE_BYTES + 10))
    assert reply.startswith(f"Error: line longer than {MAX_LINE_BYTES} bytes")
    assert gw.command("/help").startswith("Available commands:")
    assert_files_parse(gw)


def test_too_long_partial_line_is_refused_before_its_newline(gw: Instance) -> None:
    with socket.create_connection(("127.0.0.1", gw.command_port), timeout=RECV_TIMEOUT_S) as sock:
        sock.sendall(b"y" * (MAX_LINE_BYTES * 2))
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"Error: line longer than")
    assert gw.command("/help").startswith("Available commands:")


def test_invalid_utf8_is_answered_and_the_connection_goes_on(gw: Instance) -> None:
    reply = send_line(gw.command_port, b"/help \xff\xfe\x80\n/routes info\n")
    assert reply.startswith("Error: invalid UTF-8") and reply.endswith("No routes configured.\n")
    assert_files_parse(gw)


def test_idle_connections_time_out(gw: Instance) -> None:
    with socket.create_connection(("127.0.0.1", gw.command_port), timeout=IDLE_TIMEOUT_S * 4) as sock:
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(1024):
            reply += chunk
        assert reply.startswith(b"Error: idle for") and time.monotonic() - started >= IDLE_TIMEOUT_S * 0.9
    assert gw.command("/help").startswith("Available commands:")


def test_connections_beyond_the_cap_get_an_error_line(tmp_path: Path) -> None:
    instance = start_instance(tmp_path, only=GATEWAY_ONLY, config={"max_connections": MAX_CONNECTIONS})
    try:
        held = [socket.create_connection(("127.0.0.1", instance.command_port), timeout=RECV_TIMEOUT_S) for _ in range(MAX_CONNECTIONS)]
        try:
            refused = wait_until(lambda: refused_reply(instance), message="the cap to be reached")
            assert refused.startswith(f"Error: too many connections (limit {MAX_CONNECTIONS})")
            for _ in range(20):  # excess clients that leave at once: nothing may break
                send_and_close(instance.command_port, b"/help\n")
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: instance.command("/help").startswith("Available commands:"), message="service after the excess left")
    finally:
        instance.stop()
    assert_no_traceback(instance)


def refused_reply(instance: Instance) -> str | None:
    """Connect one more than the cap allows; the error line it gets (None while the cap is not reached)."""
    reply = send_line(instance.command_port, "/help")
    return reply if reply.startswith("Error: too many connections") else None


def test_disconnect_mid_line_loses_only_that_line(gw: Instance, router: FakeRouter) -> None:
    source, sink = source_and_sink(gw)
    with source, sink:
        send_and_close(gw.command_port, f"/data {source.uuid} whole\n/data {source.uuid} half-a-li".encode())
        source.send_data("after")
        assert router.payloads(2) == [b"whole", b"after"]
        wait_until(lambda: status(gw)["Gateway"]["payloads_in"] == 2, message="two payloads counted")
    assert gw.command("/help").startswith("Available commands:")
    assert_files_parse(gw)


def test_hundreds_of_concurrent_clients_are_served(tmp_path: Path) -> None:
    instance = start_instance(tmp_path, only=GATEWAY_ONLY)
    fake = FakeRouter(instance)
    try:
        source, sink = source_and_sink(instance)
        with source, sink:
            ports = [instance.command_port, *instance.data_ports]
            clients = [socket.create_connection(("127.0.0.1", ports[i % len(ports)]), timeout=RECV_TIMEOUT_S) for i in range(HUNDREDS)]
            try:
                wait_until(lambda: status(instance)["Gateway"]["connections_open"] >= HUNDREDS, message="every client connected")
                for index, sock in enumerate(clients):
                    sock.sendall(f"/data {source.uuid} from {index}\n".encode())
                assert instance.command("/help").startswith("Available commands:")
            finally:
                for sock in clients:
                    sock.close()
            assert sorted(fake.payloads(HUNDREDS)) == sorted(f"from {i}".encode() for i in range(HUNDREDS))
    finally:
        fake.close()
        instance.stop()


def test_half_close_gets_every_answer_before_the_close(gw: Instance) -> None:
    lines = "".join("/routes info\n" for _ in range(50))
    assert send_line(gw.command_port, lines) == "No routes configured.\n" * 50


# ---- listeners and the command-line client ------------------------------------------------
def test_a_taken_data_port_is_skipped_and_the_rest_served(tmp_path: Path) -> None:
    ports = free_port_range(4)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports[2]))
    blocker.listen(1)
    try:
        instance = start_instance(tmp_path, only=GATEWAY_ONLY, config={"command_port": ports[0], "data_port_range": f"{ports[1]}-{ports[3]}"})
        try:
            assert instance.command("/help").startswith("Available commands:")
            assert send_line(ports[3], "/help").startswith("Available commands:")
            log_text = (instance.config_dir / "logs" / "gateway.log").read_text()
            assert f"cannot listen on 127.0.0.1:{ports[2]}" in log_text
        finally:
            instance.stop()
    finally:
        blocker.close()


def test_ctl_prints_the_reply_and_fails_when_unreachable(gw: Instance, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_ctl(gw.runtime, "/routes info") == 0
    assert capsys.readouterr().out == "No routes configured.\n"
    assert run_ctl(gw.runtime, "/nonsense") == 1
    assert run_ctl(gw.runtime, "/routes remove nothing") == 1  # a refusal by its code, whatever its sentence begins with
    assert capsys.readouterr().out.endswith("Route 'nothing' not found.\n")
    with pytest.raises(OSError):
        send_command("127.0.0.1", free_port(), "/help", timeout=1.0)


def test_launch_ctl_subcommand(gw: Instance, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "launch.py", "--config-dir", str(gw.config_dir), "ctl", "/routes", "info"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "No routes configured.\n"
    elsewhere = tmp_path / "nothing-here"
    elsewhere.mkdir()
    (elsewhere / "orch.cf").write_text(json.dumps({"command_port": free_port(), "bind_host": "127.0.0.1"}))
    done = subprocess.run([sys.executable, "launch.py", "--config-dir", str(elsewhere), "ctl", "/help"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == EXIT_UNREACHABLE and "not reachable" in done.stderr


def test_a_new_command_port_is_listened_on_without_restart(gw: Instance) -> None:
    new_port = free_port()
    gw.state_client().request(Op.SET_CONFIG, values={"command_port": new_port})
    wait_until(lambda: port_answers(new_port), message="the new command port")
    assert send_line(new_port, "/help").startswith("Available commands:")
    with pytest.raises(OSError):
        send_line(gw.command_port, "/help", timeout=1.0)


def port_answers(port: int) -> bool:
    try:
        return send_line(port, "/help", timeout=1.0).startswith("Available commands:")
    except OSError:
        return False


# ---- the whole system ---------------------------------------------------------------------
def test_end_to_end_one_connection_per_message_at_the_sink(orchestrator: Instance) -> None:
    source, sink = source_and_sink(orchestrator)
    with source, sink:
        for i in range(5):
            source.send_data(f"message {i}")
        wait_until(lambda: len(sink.received()) == 5, 10.0, message="five deliveries")
        # The fake serves each connection in its own thread, so it may record them out of order;
        # order through the gateway is checked with the fake router above.
        assert sorted(sink.received()) == [f"message {i}" for i in range(5)]
        assert sorted(sink.connections_with_data()) == [[f"message {i}"] for i in range(5)]
        wait_until(lambda: status(orchestrator)["Messages Routed"] == 5, 10.0, message="routed count in /status")
        result = status(orchestrator)
        assert result["Routers Alive"] == 1 and result["Routes"] == 1
        wait_until(lambda: status(orchestrator)["Last Scan"] != "Never", 10.0, message="the scanner's last sweep in /status")
        # /routes info reads the replicated table: the keeper's usage update may land a moment after the router's beat
        wait_until(lambda: "Messages: 5" in orchestrator.command("/routes info"), 10.0, message="usage in /routes info")

