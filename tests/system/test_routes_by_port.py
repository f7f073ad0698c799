"""Routes work from their own fields (issue 13, section 4) and stale data is not spoken (section 6).

A route whose incoming or outgoing uuid no peripheral has (the original's files have these) is
routed as the original did: data sent as that source uuid is routed, and delivery to such an
outgoing uuid goes to the route's ``outgoing_port`` on this machine, never to one of our own
listeners. A sink's own ``max_age`` bounds how old its data may get before it is dropped.
Real processes on loopback (broker, state keeper, gateway, one router); fake sinks record arrivals.
"""
from __future__ import annotations

import json
import socket
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from tests.support.instances import LEGACY_DATA_DIR, Instance, free_port, send_bytes, start_instance, wait_until
from actors.core.protocol import Op
from tests.support.fakes import LineSink, SinkPeripheral, register, slow_reader
from tests.support.routing import route_counters, stop_quietly

LEGACY_DIR = LEGACY_DATA_DIR
DELIVERY_TIMEOUT_S = 8.0
SOCKET_TIMEOUT_S = 5.0
ACTORS = ["broker", "state", "gateway", "router"]
MAX_AGE_S = 1.0
DOWN_S = 3.0
SEND_EVERY_S = 0.1
LATENESS_SLACK_S = 0.5  # a payload's way from the source to the router's queue and from the router's check to the sink
COME_BACK_WAIT_S = 3.0
OTHER_HOST = "127.0.0.2"


def start_with_routes(tmp_path: Path, routes: list[dict[str, Any]], peripherals: list[dict[str, Any]] | None = None) -> Instance:
    """An instance whose routes.cf (and peripheral list) were written by hand before it started."""
    config_dir = tmp_path / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "routes.cf").write_text(json.dumps(routes, indent=4))
    return start_instance(tmp_path, only=ACTORS, config={"peripherals": peripherals or []})


def send_as(instance: Instance, source: str, payloads: list[bytes]) -> None:
    """The data-port protocol: uuid line, then one payload per line, then close."""
    with socket.create_connection(("127.0.0.1", instance.data_ports[0]), timeout=SOCKET_TIMEOUT_S) as conn:
        conn.sendall(source.encode() + b"\n" + b"".join(p + b"\n" for p in payloads))


def route(name: str, incoming: str, outgoing: str, incoming_port: int, outgoing_port: int) -> dict[str, Any]:
    return {"name": name, "incoming": incoming, "outgoing": outgoing, "incoming_port": incoming_port,
            "outgoing_port": outgoing_port, "last_used": None}


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def test_a_hand_made_route_between_unknown_uuids_delivers_to_its_outgoing_port(tmp_path: Path) -> None:
    """Both ends unknown: data sent as the incoming uuid arrives at a sink listening on outgoing_port, shown '(by port)'."""
    source, target = new_uuid(), new_uuid()
    with LineSink() as sink:
        instance = start_with_routes(tmp_path, [route("byport", source, target, free_port(), sink.port)])
        try:
            wait_until(lambda: _sent_and_arrived(instance, source, sink, b"hello"), DELIVERY_TIMEOUT_S, 0.2, "data at the by-port sink")
            info = instance.command("/routes info")
            assert f"UUID: {source}, Port:" in info and f"UUID: {target}, Port: {sink.port}) (by port)" in info, info
            assert info.count("(by port)") == 2, info
        finally:
            instance.stop()


def _sent_and_arrived(instance: Instance, source: str, sink: LineSink, payload: bytes) -> bool:
    if payload in sink.snapshot():
        return True
    send_as(instance, source, [payload])
    return False


def legacy_documents(llm_port: int, tts_port: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The original's own files: every peripheral but TTS_Engine (so llm_tts ends at an unknown uuid), LLM on our fake."""
    peripherals = json.loads((LEGACY_DIR / "orch.cf").read_text())["peripherals"]
    routes = json.loads((LEGACY_DIR / "routes.cf").read_text())
    kept = [p for p in peripherals if p["name"] != "TTS_Engine"]
    for peripheral in kept:
        if peripheral["name"] == "LLM_Engine":
            peripheral["port"] = llm_port
    for entry in routes:
        if entry["name"] == "llm_tts":
            entry["outgoing_port"] = tts_port
    return kept, routes


def test_the_legacy_routes_deliver_along_asr_llm_tts_with_tts_known_only_by_its_route(tmp_path: Path) -> None:
    """ASR -> LLM by the peripheral list, LLM -> TTS by the route's outgoing_port (TTS is in no peripheral list)."""
    routes = json.loads((LEGACY_DIR / "routes.cf").read_text())
    asr, llm, tts = routes[0]["incoming"], routes[0]["outgoing"], routes[1]["outgoing"]
    with LineSink() as llm_sink, LineSink() as tts_sink:
        peripherals, routes = legacy_documents(llm_sink.port, tts_sink.port)
        instance = start_with_routes(tmp_path, routes, peripherals)
        try:
            wait_until(lambda: _sent_and_arrived(instance, asr, llm_sink, b"what time is it"), DELIVERY_TIMEOUT_S, 0.2, "ASR -> LLM")
            wait_until(lambda: _sent_and_arrived(instance, llm, tts_sink, b"it is noon"), DELIVERY_TIMEOUT_S, 0.2, "LLM -> TTS by port")
            info = instance.command("/routes info")
            assert f"UUID: {tts}, Port: {tts_sink.port}) (by port)" in info, info
            to_llm = [line for line in info.splitlines() if line.strip().startswith(f"To: LLM_Engine (UUID: {llm}")]
            assert to_llm and not to_llm[0].endswith("(by port)"), info  # a known peripheral: no marker
        finally:
            instance.stop()


def test_a_by_port_route_to_our_own_command_port_is_never_delivered_to(tmp_path: Path) -> None:
    """Attacker: a hand-made route whose outgoing_port is our command port, carrying a command; it must never run."""
    source, evil_target, sink_uuid = new_uuid(), new_uuid(), new_uuid()
    with LineSink() as sink:
        # The instance's ports are chosen at start: the routes to them are written by hand once they are known.
        instance = start_with_routes(tmp_path, [route("canary", new_uuid(), new_uuid(), free_port(), free_port()),
                                                route("healthy", source, sink_uuid, free_port(), sink.port)])
        try:
            assert "Route Name: canary" in instance.command("/routes info")
            own_ports = [instance.command_port, instance.data_ports[0]]
            routes = instance.read_json("routes.cf")
            routes += [route(f"evil{port}", source, evil_target if i == 0 else new_uuid(), free_port(), port) for i, port in enumerate(own_ports)]
            (instance.config_dir / "routes.cf").write_text(json.dumps(routes, indent=4))
            if not _hand_edits_supported(instance):
                pytest.skip("this build does not pick up a routes.cf edited while running")
            for n in range(3):
                send_as(instance, source, [b"/routes remove canary", b"ping%d" % n])
            wait_until(lambda: b"ping2" in sink.snapshot(), DELIVERY_TIMEOUT_S, 0.1, "the healthy route's delivery")
            time.sleep(0.5)  # the evil routes' deliveries would have run by now
            assert "Route Name: canary" in instance.command("/routes info"), "data delivered to our own port ran as a command"
        finally:
            instance.stop()


def _hand_edits_supported(instance: Instance) -> bool:
    """Whether this build picks up a routes.cf edited while running (issue 13 section 2, another branch)."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if "evil" in instance.command("/routes info"):
            return True
        time.sleep(0.2)
    return False


def talk_from(address: str, port: int, data: bytes) -> str:
    """Connect from a chosen loopback address (another host), send, half-close, return what the gateway answered."""
    return send_bytes(port, data, SOCKET_TIMEOUT_S, source=address)


def test_data_as_a_route_only_uuid_from_another_host_is_refused_and_from_this_machine_routed(tmp_path: Path) -> None:
    """Attacker on 127.0.0.2 (not an admin): a uuid only a route knows is on this machine, like a record without a host."""
    source, target = new_uuid(), new_uuid()
    with LineSink() as sink:
        config_dir = tmp_path / "config"
        config_dir.mkdir(parents=True)
        (config_dir / "routes.cf").write_text(json.dumps([route("byport", source, target, free_port(), sink.port)]))
        instance = start_instance(tmp_path, only=ACTORS, config={"admin_clients": ["127.0.0.1/32"]})
        try:
            on_data = talk_from(OTHER_HOST, instance.data_ports[0], f"{source}\nforged-1\n".encode())
            on_command = talk_from(OTHER_HOST, instance.command_port, f"/data {source} forged-2\n".encode())
            for reply in (on_data, on_command):
                assert reply.startswith(f"Error: data as {source} refused"), reply
            wait_until(lambda: _sent_and_arrived(instance, source, sink, b"genuine"), DELIVERY_TIMEOUT_S, 0.2, "data from this machine")
            assert not any(line.startswith(b"forged") for line in sink.snapshot()), sink.snapshot()
        finally:
            instance.stop()


# ---- section 6: a sink's own max_age -------------------------------------------------------------
WAYS = ("delivery", "config", "info")


def registered(instance: Instance, name: str, port: int, uuid: str | None = None) -> str:
    uuid = uuid or new_uuid()
    ack = register(instance.command_port, name, uuid, port)
    assert ack.startswith("/ack "), ack
    return uuid


def max_age_of(instance: Instance, uuid: str) -> Any:
    snapshot = instance.state_client().request(Op.SNAPSHOT, timeout=SOCKET_TIMEOUT_S)
    return next((p.get("max_age") for p in snapshot["peripherals"] if p["uuid"] == uuid), None)


def set_max_age(instance: Instance, way: str, uuid: str, port: int) -> None:
    """Give the TTS max_age 1 s by one of the three ways; the router's bound stays the default 60 s."""
    if way == "delivery":
        assert "max_age 1s" in instance.command(f"/delivery TTS_Engine message {MAX_AGE_S:g}")
    elif way == "config":
        reply = instance.command(f'/config {uuid}\n{{"max_age": {MAX_AGE_S:g}, "voice": "en"}}\nEOF')
        assert "Config stored" in reply, reply
    else:
        with SinkPeripheral("TTS_Engine", uuid, {"max_age": f"{MAX_AGE_S:g}"}, port=port):
            wait_until(lambda: max_age_of(instance, uuid) == MAX_AGE_S, DELIVERY_TIMEOUT_S, 0.2, "max_age= from /info")
    wait_until(lambda: max_age_of(instance, uuid) == MAX_AGE_S, DELIVERY_TIMEOUT_S, 0.1, "max_age stored")


@pytest.mark.parametrize("way", WAYS)
def test_a_sink_with_max_age_1_down_for_3s_gets_nothing_older_than_1s_and_the_loss_is_counted(tmp_path: Path, way: str) -> None:
    """A restarted TTS: what was said while it was down is not spoken when it comes back (max_age set each of three ways)."""
    tts_port = free_port()
    scanner = {"only": [*ACTORS, "scanner"], "config": {"known_ports": str(tts_port)}} if way == "info" else {"only": ACTORS}
    instance = start_instance(tmp_path, **scanner)
    sink = None
    try:
        source = registered(instance, "LLM_Engine", free_port())
        tts = registered(instance, "TTS_Engine", tts_port)
        set_max_age(instance, way, tts, tts_port)
        assert "added" in instance.command("/routes add speak LLM_Engine TTS_Engine")
        deadline = time.monotonic() + DOWN_S
        while time.monotonic() < deadline:  # the TTS is down: nothing listens on its port
            send_as(instance, source, [b"t %.6f" % time.time()])
            time.sleep(SEND_EVERY_S)
        sink = slow_reader(tts_port, lines_per_s=100.0, backlog=1).start()
        def fresh_arrived() -> bool:
            send_as(instance, source, [b"t %.6f" % time.time()])
            return any(line.startswith(b"t ") and time.time() - at > 0.3 for line, at in sink.arrivals())
        wait_until(fresh_arrived, COME_BACK_WAIT_S * 2, 0.1, "fresh data at the TTS that came back")
        lateness = [arrived - float(line.split()[1]) for line, arrived in sink.arrivals() if line.startswith(b"t ")]
        assert max(lateness) < MAX_AGE_S + LATENESS_SLACK_S, f"spoken {max(lateness):.1f}s late (max_age {MAX_AGE_S}s)"
        wait_until(lambda: route_counters(instance).get("speak", {}).get("dropped", 0) >= (DOWN_S - MAX_AGE_S - 1) / SEND_EVERY_S,
                   DELIVERY_TIMEOUT_S, 0.2, "the stale payloads counted dropped on the route")
    finally:
        stop_quietly(sink)
        instance.stop()


@pytest.mark.parametrize("bad", ["0", "nan", "soon", "100000"])
def test_a_bad_max_age_is_refused_with_a_clear_error_by_delivery_and_config(tmp_path: Path, bad: str) -> None:
    """Nothing of a refused command is applied: the mode and the stored /config stay as they were."""
    instance = start_instance(tmp_path, only=["broker", "state", "gateway"])
    try:
        tts = registered(instance, "TTS_Engine", free_port())
        reply = instance.command(f"/delivery TTS_Engine stream {bad}")
        assert reply.startswith("Error") and "max_age" in reply, reply
        as_json = {"nan": "NaN", "soon": '"soon"'}.get(bad, bad)
        reply = instance.command(f'/config {tts}\n{{"max_age": {as_json}, "voice": "en"}}\nEOF')
        assert reply.startswith("Error") and "max_age" in reply, reply
        snapshot = instance.state_client().request(Op.SNAPSHOT, timeout=SOCKET_TIMEOUT_S)
        record = next(p for p in snapshot["peripherals"] if p["uuid"] == tts)
        assert record["delivery"] == "message" and "max_age" not in record and record["config"] in ({}, ""), record
    finally:
        instance.stop()
