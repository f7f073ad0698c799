"""A peripheral's identity cannot be taken over: a uuid belongs to the host that registered it.

Hosts are simulated on loopback by binding the client socket to 127.0.0.2 / 127.0.0.3, with
admin_clients ["127.0.0.1/32"], so only 127.0.0.1 (and a connection that sent /auth) is an admin.
Every test plays the attacker: it tries the takeover and checks that nothing moved.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings, strategies as st

from actors.core.errors import BadArguments, NotOwner, OrchestratorError
from actors.core.protocol import Op
from actors.core.settings import default_config
from actors.state.tables import Tables
from actors.core.net import same_host
from tests.support.instances import (COMMAND_TIMEOUT_S, Instance, free_port, free_port_range, send_bytes,
                                     start_instance, wait_until)
from tests.support.fakes import InfoPeripheral, LineSink

TOKEN = "identity-test-token"
OWNER, ATTACKER, THIRD, ADMIN = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"
DELIVERY_WAIT_S = 5.0
QUIET_WAIT_S = 1.0
REFUSALS_SENT = 10


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


# ---- a client on a chosen loopback address -----------------------------------------------------
def talk(port: int, lines: list[str] | bytes, source: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Connect from `source`, send the lines, half-close, and return everything read until the gateway closes."""
    data = lines if isinstance(lines, bytes) else "".join(line + "\n" for line in lines).encode()
    return send_bytes(port, data, timeout, source=source)


def register(instance: Instance, source: str, name: str, uuid: str, port: int) -> str:
    return talk(instance.command_port, [f"/register {name} {uuid} {port}"], source).strip()


def record(instance: Instance, uuid: str) -> dict[str, Any]:
    snapshot = instance.state_client().request(Op.SNAPSHOT)
    return next(p for p in snapshot["peripherals"] if p["uuid"] == uuid)


def gateway_counter(instance: Instance, key: str) -> int:
    return int(json.loads(instance.command("/status"))["Gateway"].get(key, 0))


def log_lines(instance: Instance, actor: str, needle: str) -> list[str]:
    path = instance.config_dir / "logs" / f"{actor}.log"
    return [line for line in path.read_text(errors="replace").splitlines() if needle in line] if path.exists() else []


@pytest.fixture(scope="module")
def orch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """Only 127.0.0.1 is an admin network; other loopback addresses are other hosts."""
    instance = start_instance(tmp_path_factory.mktemp("identity"), config={"admin_clients": ["127.0.0.1/32"], "admin_token": TOKEN})
    try:
        yield instance
    finally:
        instance.stop()


# ---- registration ----------------------------------------------------------------------------
def test_another_host_cannot_take_a_uuid_over_by_registering_it(orch: Instance) -> None:
    victim = uid(1)
    assert register(orch, OWNER, "Speaker", victim, 7101).startswith("/ack ")
    reply = register(orch, ATTACKER, "Speaker", victim, 7666)
    assert reply.startswith("Error: ") and "registered from another host" in reply and "admin" in reply
    assert register(orch, ATTACKER, "Renamed", victim, 7101).startswith("Error: ")  # nor rename it
    kept = record(orch, victim)
    assert (kept["name"], kept["port"], kept["host"]) == ("Speaker", 7101, OWNER)


def test_the_same_host_reregisters_with_a_new_name_and_port(orch: Instance) -> None:
    """A restarted peripheral, as in the original: name and port follow; the data port and the host stay."""
    uuid = uid(2)
    first = register(orch, OWNER, "Camera", uuid, 7102)
    again = register(orch, OWNER, "Eye", uuid, 7202)
    assert again == first and again.startswith("/ack ")
    moved = record(orch, uuid)
    assert (moved["name"], moved["port"], moved["host"]) == ("Eye", 7202, OWNER)


def test_local_registrations_record_their_exact_address(orch: Instance) -> None:
    register(orch, ADMIN, "LocalOne", uid(3), 7103)
    register(orch, OWNER, "LocalTwo", uid(4), 7104)
    assert (record(orch, uid(3))["host"], record(orch, uid(4))["host"]) == (ADMIN, OWNER)


def test_an_admin_may_reregister_and_the_host_follows(orch: Instance) -> None:
    """A uuid first registered elsewhere and re-registered from here delivers here from then on."""
    uuid = uid(5)
    register(orch, OWNER, "Mover", uuid, 7105)
    assert register(orch, ADMIN, "Mover", uuid, 7205).startswith("/ack ")
    assert (record(orch, uuid)["host"], record(orch, uuid)["port"]) == (ADMIN, 7205)
    assert register(orch, OWNER, "Mover", uuid, 7105).startswith("Error: ")  # the old host lost it


def test_auth_gives_a_connection_the_right_to_reregister(orch: Instance) -> None:
    uuid = uid(6)
    register(orch, OWNER, "Handed", uuid, 7106)
    reply = talk(orch.command_port, [f"/auth {TOKEN}", f"/register Handed {uuid} 7306"], ATTACKER)
    assert reply.splitlines()[-1].startswith("/ack ")
    assert record(orch, uuid)["host"] == ATTACKER


# ---- /config, /exit -----------------------------------------------------------------------------
def test_config_for_another_hosts_peripheral_is_refused(orch: Instance) -> None:
    uuid = uid(7)
    register(orch, OWNER, "Configured", uuid, 7107)
    assert talk(orch.command_port, [f"/config {uuid}", '{"voice": "mine"}', "EOF"], OWNER).strip() == "Config stored for Configured."
    reply = talk(orch.command_port, [f"/config {uuid}", '{"delivery": "stream", "voice": "evil"}', "EOF"], ATTACKER)
    assert reply.startswith("Error: /config for Configured") and "admin" in reply
    kept = record(orch, uuid)
    assert (kept["config"], kept["delivery"]) == ({"voice": "mine"}, "message")


def test_exit_for_another_hosts_peripheral_is_refused(orch: Instance) -> None:
    uuid = uid(8)
    register(orch, OWNER, "Online", uuid, 7108)
    assert talk(orch.command_port, [f"/exit {uuid}"], ATTACKER).startswith("Error: /exit for Online")
    assert record(orch, uuid)["online"] is True
    assert talk(orch.command_port, [f"/exit {uuid}"], OWNER).strip() == "Online marked offline."
    assert record(orch, uuid)["online"] is False


# ---- /data on the command port and the data ports ---------------------------------------------------
def test_data_as_another_hosts_peripheral_is_refused_on_every_port(orch: Instance) -> None:
    source, sink_uuid = uid(9), uid(10)
    with LineSink() as sink:
        register(orch, OWNER, "Mic", source, 7109)
        assert register(orch, ADMIN, "Ear", sink_uuid, sink.port).startswith("/ack ")
        assert orch.command("/routes add mic-ear Mic Ear").strip() == "Route 'mic-ear' added successfully."
        before = gateway_counter(orch, "refused_identity")
        on_command = talk(orch.command_port, [f"/data {source} forged-1"], ATTACKER)
        on_data = talk(orch.data_ports[0], f"{source}\nforged-2\n".encode(), ATTACKER)
        for reply in (on_command, on_data):
            assert reply.startswith(f"Error: data as {source} refused") and "admin" in reply
        talk(orch.command_port, [f"/data {source} genuine"], OWNER)
        wait_until(lambda: b"genuine" in sink.snapshot(), DELIVERY_WAIT_S, message="the owner's payload")
        assert not any(line.startswith(b"forged") for line in sink.snapshot())
        assert gateway_counter(orch, "refused_identity") >= before + 2


def test_refusals_are_counted_and_logged_at_most_once_a_minute_per_address(orch: Instance) -> None:
    uuid = uid(11)
    register(orch, OWNER, "Noisy", uuid, 7111)
    before = gateway_counter(orch, "refused_identity")
    for _ in range(REFUSALS_SENT):
        talk(orch.command_port, [f"/exit {uuid}"], THIRD)
    assert gateway_counter(orch, "refused_identity") == before + REFUSALS_SENT
    wait_until(lambda: log_lines(orch, "gateway", f"from {THIRD}"), message="the refusal activity line")
    assert len(log_lines(orch, "gateway", f"from {THIRD}")) == 1


# ---- the scanner --------------------------------------------------------------------------------
@pytest.fixture
def scanned(tmp_path: Path) -> Iterator[tuple[Instance, int]]:
    """An instance that sweeps one known port (on 127.0.0.1) every 0.3 s; the test puts an impostor there."""
    port = free_port()
    instance = start_instance(tmp_path, config={"admin_clients": ["127.0.0.1/32"], "known_ports": str(port), "scan_interval": 0.3})
    try:
        yield instance, port
    finally:
        instance.stop()


@pytest.mark.parametrize("owner", [OWNER, ADMIN], ids=["other-host", "same-host-live-port"])
def test_the_scanner_never_moves_a_registered_peripheral(scanned: tuple[Instance, int], owner: str) -> None:
    """An impostor on a known port answering /info with an existing uuid takes over neither its host nor its port."""
    instance, known_port = scanned
    victim = uid(12)
    assert register(instance, owner, "Speaker", victim, 7112).startswith("/ack ")
    with InfoPeripheral("Impostor", victim, config={"delivery": "stream"}, port=known_port):
        wait_until(lambda: log_lines(instance, "scanner", "not moved"), 10.0, message="the scanner to refuse the move")
    kept = record(instance, victim)
    assert (kept["name"], kept["port"], kept["host"], kept["delivery"]) == ("Speaker", 7112, owner, "message")


# ---- the rules themselves, without sockets ---------------------------------------------------------
@pytest.fixture
def tables() -> Tables:
    config = default_config()
    config.update({"command_port": 6000, "data_port_range": "6001-6003"})
    return Tables(config, [], clock=lambda: 100.0)


def test_internal_callers_and_legacy_localhost_records_keep_working(tables: Tables) -> None:
    """Records from an old orch.cf say "localhost" (or nothing): that is 127.0.0.1, which may re-register them."""
    tables.peripherals[uid(20)] = tables._normalise_peripheral({"name": "Old", "uuid": uid(20), "port": 6201})
    record, _ = tables.register({"name": "Old", "uuid": uid(20), "port": 6202, "host": "127.0.0.1", "admin": False})
    assert (record["port"], record["host"]) == (6202, "127.0.0.1")
    with pytest.raises(NotOwner):
        tables.register({"name": "Old", "uuid": uid(20), "port": 6202, "host": "::ffff:127.0.0.9", "admin": False})
    record, _ = tables.register({"name": "Old", "uuid": uid(20), "port": 6203, "host": "::ffff:127.0.0.1", "admin": False})
    assert record["host"] == "127.0.0.1"  # IPv4-mapped is the same host


def test_a_scanner_may_follow_an_offline_peripheral_restarted_on_its_own_host(tables: Tables) -> None:
    tables.register({"name": "Tts", "uuid": uid(21), "port": 6210, "host": "127.0.0.1", "admin": False})
    with pytest.raises(NotOwner):
        tables.seen({"name": "Tts", "uuid": uid(21), "port": 6211, "host": "localhost", "address": "127.0.0.1"})
    tables.lost({"uuid": uid(21)})
    record, _ = tables.seen({"name": "Tts", "uuid": uid(21), "port": 6211, "host": "localhost", "address": "127.0.0.1"})
    assert (record["port"], record["online"]) == (6211, True)
    with pytest.raises(NotOwner):
        tables.seen({"name": "Tts", "uuid": uid(21), "port": 6211, "host": "pi", "address": "10.0.0.7"})


HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "10.0.0.7", "::ffff:127.0.0.2")
operations = st.lists(st.tuples(st.sampled_from(("register", "config", "exit")), st.integers(0, 2), st.sampled_from(HOSTS),
                                st.booleans(), st.integers(6200, 6203)), max_size=25)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_only_the_owner_or_an_admin_ever_changes_a_peripheral(ops: list[tuple[str, int, str, bool, int]]) -> None:
    """Whatever clients try, in any order: a record changes only for its own host or an admin, and its host follows only them."""
    config = default_config()
    config.update({"command_port": 6000, "data_port_range": "6001-6003"})
    tables = Tables(config, [], clock=lambda: 100.0)
    for op, n, host, admin, port in ops:
        uuid = uid(50 + n)
        before = dict(tables.peripherals[uuid]) if uuid in tables.peripherals else None
        caller = {"host": host, "admin": admin}
        try:
            if op == "register":
                tables.register({"name": f"P{port}", "uuid": uuid, "port": port, **caller})
            elif op == "config":
                tables.set_peripheral_config({"uuid": uuid, "config": {"by": host}, **caller})
            else:
                tables.lost({"uuid": uuid, **caller})
        except OrchestratorError as exc:  # an unknown uuid or the quota for a new one; for a known one only the owner rule
            if before is not None:
                assert isinstance(exc, NotOwner) and not admin and not same_host(before["host"], host)
                assert tables.peripherals[uuid] == before  # a refusal changes nothing
            continue
        after = tables.peripherals[uuid]
        if before is not None and not admin:
            assert same_host(before["host"], host)
        if op == "register":
            assert same_host(after["host"], host)


# ---- our own listeners (issue 12, section 8) -------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
@pytest.mark.parametrize("port", [6000, 6001, 6003])
def test_registering_on_our_own_listener_ports_is_refused(tables: Tables, host: str, port: int) -> None:
    with pytest.raises(BadArguments, match="own listeners"):
        tables.register({"name": "Loop", "uuid": uid(30), "port": port, "host": host, "admin": True})


def test_our_ports_on_another_board_or_reached_through_our_lan_address(tables: Tables) -> None:
    record, _ = tables.register({"name": "Remote", "uuid": uid(31), "port": 6000, "host": "10.0.0.7", "admin": False})
    assert record["port"] == 6000  # a peripheral on another board may use 6000 on its own address
    with pytest.raises(BadArguments, match="own listeners"):  # the gateway flags a client on one of our own addresses
        tables.register({"name": "Lan", "uuid": uid(32), "port": 6000, "host": "192.168.1.5", "admin": True, "this_machine": True})
    with pytest.raises(BadArguments, match="own listeners"):  # moving our ports onto a local peripheral is refused too
        tables.register({"name": "Here", "uuid": uid(33), "port": 6300, "host": "127.0.0.1", "admin": True})
        tables.set_config({"values": {"command_port": 6300}})


def test_a_peripheral_cannot_be_registered_on_our_command_port_to_loop_admin_commands(orch: Instance) -> None:
    """The loop of issue 12: A on our command port, route A->A with a template; registration is refused, nothing loops."""
    reply = register(orch, ADMIN, "Looper", uid(40), orch.command_port)
    assert reply.startswith("Error: ") and "own listeners" in reply
    assert register(orch, OWNER, "Looper", uid(40), orch.data_ports[1]).startswith("Error: ")
    assert "Looper" not in orch.command("/list")


def test_a_hand_edited_record_on_our_command_port_gets_no_delivery(tmp_path: Path) -> None:
    """A record on our command port from a hand-edited orch.cf: routers never deliver to it, so /data neither loops nor resets."""
    looper = uid(41)
    ports = free_port_range(4)
    (tmp_path / "config").mkdir()
    routes = [{"name": name, "incoming": looper, "outgoing": looper, "incoming_port": ports[0], "outgoing_port": ports[0],
               "last_used": None, "transform": transform} for name, transform in (("loop", "template:/data {source} {payload}"),
                                                                                ("admin", "template:/reset"))]
    (tmp_path / "config" / "routes.cf").write_text(json.dumps(routes))
    peripheral = {"name": "Looper", "uuid": looper, "port": ports[0], "host": "127.0.0.1", "config": {}, "last_seen": None, "data_port": ports[1]}
    instance = start_instance(tmp_path, config={"command_port": ports[0], "known_ports": str(ports[0]),
                                                "data_port_range": f"{ports[1]}-{ports[-1]}", "peripherals": [peripheral]})
    try:
        def looped() -> bool:  # a delivery came back to us as a payload or ran /reset
            return gateway_counter(instance, "payloads_in") > 1 or "Looper" not in instance.command("/list")

        instance.command(f"/data {looper} now")
        wait_until(lambda: looped() or log_lines(instance, "router-1", "our own port"), DELIVERY_WAIT_S, message="a delivery or a refusal")
        assert not looped()
    finally:
        instance.stop()
