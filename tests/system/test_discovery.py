"""Config pushed by a peripheral survives discovery; discovery and liveness fit real peripherals (issue 13, sections 3 and 5).

Unit tests check the merge rule and the line session; the rest start the real actors on loopback
with fake peripherals on ephemeral ports.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from actors.gateway.text.handlers import apply_config_block
from actors.gateway.text.session import ConfigBlock, LineSession
from actors.scanner.probe import CONNECT_TIMEOUT_S, Outcome, sweep
from actors.core.protocol import Op
from actors.core.replica import StateReplica
from actors.scanner.scanner import Liveness
from actors.core.settings import TUNABLE_DEFAULTS, check_config, default_config
from actors.state.tables import Tables
from tests.support.instances import Instance, free_port, start_instance, wait_until
from tests.support.fakes import FakeListener, InfoPeripheral, RegisteringPeripheral, register, send_and_close
from tests.support.scanning import peripherals, scanner_stats, start, start_scanning, target, wait_sweeps

UUID_A = "11111111-2222-4333-8444-555555555555"
UUID_B = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
QUICK_ANSWER_S = 0.5  # for tests where no port is slow: keeps sweeps short
BUSY_ANSWER_DELAY_S = 1.0  # the busy peripheral of the issue
WAIT_S = 15.0
MULTILINE_PROMPT = "You are a robot.\nAnswer in one sentence.\n\nNever shout."

# ---- the merge rule (Tables) ----------------------------------------------------------------------
def tables_with(config_value: Any = None) -> Tables:
    entry = {"name": "LLM_Engine", "uuid": UUID_A, "port": 7000, "host": "127.0.0.1"}
    if config_value is not None:
        entry["config"] = config_value
    return Tables({**default_config(), "peripherals": [entry]}, [])

def seen(tables: Tables, config: dict[str, str]) -> dict[str, Any]:
    record, _ = tables.seen({"name": "LLM_Engine", "uuid": UUID_A, "port": 7000, "host": "127.0.0.1", "config": config})
    return record

keys = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8)

@settings(max_examples=200, deadline=None)
@given(first_info=st.dictionaries(keys, st.text(max_size=10)), pushed=st.dictionaries(keys, json_values, min_size=1),
       later_infos=st.lists(st.dictionaries(keys, st.text(max_size=10)), min_size=1, max_size=4))
def test_info_never_replaces_a_key_the_config_set(first_info: dict[str, str], pushed: dict[str, Any], later_infos: list[dict[str, str]]) -> None:
    tables = tables_with({})
    seen(tables, first_info)
    tables.set_peripheral_config({"uuid": UUID_A, "config": pushed})
    for info in later_infos:
        record = seen(tables, info)
    config = record["config"]
    assert {key: config[key] for key in pushed} == pushed  # /config wins for the keys it set
    for key, value in later_infos[-1].items():
        if key not in pushed:
            assert config[key] == value  # /info adds and updates its own keys

def test_a_new_config_takes_over_from_the_previous_one() -> None:
    tables = tables_with({})
    seen(tables, {"model": "m1", "system_prompt": ""})
    tables.set_peripheral_config({"uuid": UUID_A, "config": {"system_prompt": MULTILINE_PROMPT, "temperature": 0.2}})
    tables.set_peripheral_config({"uuid": UUID_A, "config": {"temperature": 0.7}})
    assert seen(tables, {"model": "m2", "system_prompt": ""})["config"] == {"model": "m2", "system_prompt": "", "temperature": 0.7}

def test_delivery_follows_the_winning_key() -> None:
    tables = tables_with({})
    tables.set_peripheral_config({"uuid": UUID_A, "config": {"delivery": "stream"}})
    assert seen(tables, {"delivery": "message"})["delivery"] == "stream"

@pytest.mark.parametrize("value", ["", None, [], "legacy text"], ids=["empty-string", "null", "empty-list", "text"])
def test_config_keeps_the_type_the_file_gave_it_until_something_is_stored(value: Any) -> None:
    entry = {"name": "Old_Engine", "uuid": UUID_A, "port": 7000, "config": value}
    tables = Tables({**default_config(), "peripherals": [entry]}, [])
    assert tables.peripherals[UUID_A]["config"] == value and type(tables.peripherals[UUID_A]["config"]) is type(value)
    record, _ = tables.seen({"name": "Old_Engine", "uuid": UUID_A, "port": 7000, "config": {}})
    assert record["config"] == value and tables.config_document()["peripherals"][0]["config"] == value
    record, _ = tables.seen({"name": "Old_Engine", "uuid": UUID_A, "port": 7000, "config": {"model": "m"}})
    assert record["config"] == {"model": "m"}

# ---- a /config block ended by the connection closing (LineSession) -------------------------------
def config_session(*lines: str) -> LineSession:
    session = LineSession(data_port=False, max_config_bytes=10_000)
    for line in lines:
        assert session.feed(line.encode()) is None
    return session

@pytest.mark.parametrize("partial", [b"", b'"b": 2}', b"  "], ids=["after-newline", "partial-last-line", "blank-partial"])
def test_a_config_block_without_eof_ends_at_close(partial: bytes) -> None:
    lines = (f"/config {UUID_A}", "{", '"a": 1,') if partial.strip() else (f"/config {UUID_A}", '{"a": 1,', '"b": 2}')
    item = config_session(*lines).end(partial)
    assert isinstance(item, ConfigBlock) and item.ended_by_close and item.target == UUID_A
    assert json.loads(item.text) == ({"a": 1, "b": 2})

def test_close_outside_a_config_block_ends_nothing() -> None:
    assert LineSession(data_port=False, max_config_bytes=100).end(b"/list") is None
    session = config_session(f"/config {UUID_A}", "{}")
    assert isinstance(session.feed(b"EOF"), ConfigBlock) and session.end(b"") is None

def test_a_partial_eof_line_is_an_ordinary_end() -> None:
    item = config_session(f"/config {UUID_A}", "{}").end(b"EOF")
    assert isinstance(item, ConfigBlock) and not item.ended_by_close

class StoreContext:
    """Just enough CommandContext for apply_config_block."""

    def __init__(self) -> None:
        self.replica = StateReplica()
        self.requests: list[dict[str, Any]] = []

    async def request(self, op: Op, **args: Any) -> Any:
        self.requests.append(args)
        return {"name": "Sum_Engine"}

@given(text=st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_an_unended_block_is_stored_only_when_it_is_a_json_object(text: str) -> None:
    ctx = StoreContext()
    reply = asyncio.run(apply_config_block(ConfigBlock(UUID_A, text, ended_by_close=True), ctx))  # type: ignore[arg-type]
    try:
        is_object = isinstance(json.loads(text), dict)
    except ValueError:
        is_object = False
        assert "without an EOF line" in reply.text
    assert (reply.code == 0) == is_object and bool(ctx.requests) == is_object

# ---- liveness from re-registration (unit) --------------------------------------------------------
def test_a_reregistration_between_sweeps_counts_as_a_sighting() -> None:
    live = Liveness()
    scanned = {("127.0.0.1", 7000)}
    record = {"uuid": UUID_A, "name": "A", "port": 7000, "host": "127.0.0.1", "online": True, "last_seen": 100.0}
    assert live.after_sweep({UUID_A: record}, set(), scanned, 2) == []
    record = {**record, "last_seen": 105.0}  # registered again meanwhile
    assert live.after_sweep({UUID_A: record}, set(), scanned, 2) == []
    assert live.after_sweep({UUID_A: record}, set(), scanned, 2) == []  # one miss since then
    assert live.after_sweep({UUID_A: record}, set(), scanned, 2) == [UUID_A]

def test_our_own_reports_are_not_sightings() -> None:
    live = Liveness()
    scanned = {("127.0.0.1", 7000)}
    record = {"uuid": UUID_A, "name": "A", "port": 7000, "host": "127.0.0.1", "online": True, "last_seen": 100.0}
    live.after_sweep({UUID_A: record}, {UUID_A}, scanned, 2)
    live.note_reported(UUID_A, 110.0)
    live.after_sweep({UUID_A: record}, {UUID_A}, scanned, 2)  # the replica has not caught up with our report yet
    record = {**record, "last_seen": 110.0}
    assert live.after_sweep({UUID_A: record}, set(), scanned, 2) == []
    assert live.after_sweep({UUID_A: record}, set(), scanned, 2) == [UUID_A]

# ---- scan_answer_timeout ----------------------------------------------------------------------------
def test_scan_answer_timeout_defaults_to_two_seconds_and_is_validated_per_key() -> None:
    assert TUNABLE_DEFAULTS["scan_answer_timeout"] == 2.0
    assert check_config({"scan_answer_timeout": "1.5"}).value["scan_answer_timeout"] == 1.5
    for bad in (0, -1, "soon", 3600, True):
        checked = check_config({"scan_answer_timeout": bad})
        assert "scan_answer_timeout" not in checked.value and "scan_answer_timeout" in checked.reset
        assert any("scan_answer_timeout" in line for line in checked.warnings)

def test_a_busy_peripheral_answering_after_a_second_is_found_with_the_default_timeout(fakes: list[FakeListener]) -> None:
    busy = start(fakes, InfoPeripheral("Busy_Engine", answer_delay_s=BUSY_ANSWER_DELAY_S))
    results = asyncio.run(sweep([target(busy)]))
    assert [(r.outcome, r.answer.uuid if r.answer else None) for r in results] == [(Outcome.FOUND, busy.uuid)]

def test_silent_ports_cost_a_sweep_one_answer_timeout_in_all(fakes: list[FakeListener]) -> None:
    silent = [start(fakes, FakeListener(lambda conn, fake: fake.stopping.wait(5.0))) for _ in range(10)]
    good = start(fakes, InfoPeripheral("Good_Engine"))
    began = time.monotonic()
    results = asyncio.run(sweep([target(fake) for fake in (*silent, good)], answer_timeout_s=0.5))
    assert time.monotonic() - began < 0.5 + CONNECT_TIMEOUT_S + 1.0  # ten in a row would be 5 s
    assert sorted(r.outcome.value for r in results) == sorted([Outcome.FOUND.value] + [Outcome.SILENT.value] * 10)

# ---- real processes -----------------------------------------------------------------------------
def online(instance: Instance, uuid: str) -> bool:
    return bool(peripherals(instance).get(uuid, {}).get("online"))

def discovering(tmp_path: Path, known_ports: str | None, full: bool = False, **config: Any) -> Instance:
    """The scanner (or the full system) on known_ports; these tests register peripherals only on ports they opened,
    so the registered-port probe may run."""
    return start_scanning(tmp_path, known_ports, full, **{"probe_registered_ports": True, **config})

def test_a_config_key_survives_three_sweeps(tmp_path: Path, fakes: list[FakeListener]) -> None:
    llm = start(fakes, InfoPeripheral("LLM_Engine", config={"model": "small", "system_prompt": ""}))
    instance = discovering(tmp_path, str(llm.port), full=True, scan_answer_timeout=QUICK_ANSWER_S)
    try:
        wait_until(lambda: online(instance, llm.uuid), WAIT_S, 0.1, "discovery")
        pushed = {"system_prompt": MULTILINE_PROMPT, "only_in_config": {"tools": ["clock", "weather"]}}
        lines = "\n".join(json.dumps(pushed, indent=2).splitlines())  # JSON over several lines, as llm.py sends it
        assert instance.command(f"/config {llm.uuid}\n{lines}\nEOF") == "Config stored for LLM_Engine.\n"
        llm.config["model"] = "large"  # /info still updates its own keys
        wait_sweeps(instance, 3)
        expected = {**pushed, "model": "large"}
        assert peripherals(instance)[llm.uuid]["config"] == expected
        stored = lambda: next(p for p in instance.read_json("orch.cf")["peripherals"] if p["uuid"] == llm.uuid)["config"] == expected
        wait_until(stored, WAIT_S, 0.1, "the merged config in orch.cf")
    finally:
        instance.stop()

@pytest.mark.parametrize("ending", ["\n", ""], ids=["newline-then-close", "close-mid-line"])
def test_a_config_block_ended_by_closing_is_stored(tmp_path: Path, ending: str) -> None:
    instance = start_instance(tmp_path, only=["broker", "state", "gateway"])
    try:
        assert register(instance.command_port, "Sum_Engine", UUID_A, free_port()).startswith("/ack ")
        body = json.dumps({"summary_length": 3, "style": "bullet\npoints"}, indent=1)
        assert instance.command(f"/config {UUID_A}\n{body}{ending}") == "Config stored for Sum_Engine.\n"  # no EOF line
        assert peripherals(instance)[UUID_A]["config"] == {"summary_length": 3, "style": "bullet\npoints"}
        send_and_close(instance.command_port, f"/config {UUID_A}\n{{\"embed_dim\": 384}}\n".encode())  # closes without reading
        wait_until(lambda: peripherals(instance)[UUID_A]["config"] == {"embed_dim": 384}, WAIT_S, 0.1,
                   "the block sent by send-and-close")
        reply = instance.command(f"/config {UUID_A}\n{{\"half\": ")
        assert "not valid JSON" in reply and "without an EOF line" in reply
        assert peripherals(instance)[UUID_A]["config"] == {"embed_dim": 384}
    finally:
        instance.stop()

def test_config_empty_string_in_a_loaded_file_stays(tmp_path: Path) -> None:
    legacy = {"name": "Old_Engine", "uuid": UUID_A, "config": "", "port": free_port(), "last_seen": 1700000000.0, "data_port": None}
    instance = start_instance(tmp_path, only=["broker", "state"], config={"peripherals": [legacy]})
    try:
        assert peripherals(instance)[UUID_A]["config"] == ""
        instance.state_client().request(Op.REGISTER, name="New_Engine", uuid=UUID_B, port=free_port())  # forces a write
        written = lambda: {p["uuid"]: p for p in instance.read_json("orch.cf")["peripherals"]}
        wait_until(lambda: UUID_B in written(), WAIT_S, 0.1, "the write")
        assert written()[UUID_A]["config"] == ""
    finally:
        instance.stop()

def test_the_scanner_finds_a_busy_peripheral_with_default_settings(tmp_path: Path, fakes: list[FakeListener]) -> None:
    busy = start(fakes, InfoPeripheral("Busy_Engine", answer_delay_s=BUSY_ANSWER_DELAY_S))
    instance = discovering(tmp_path, str(busy.port))
    try:
        wait_until(lambda: online(instance, busy.uuid), WAIT_S, 0.1, "the busy peripheral discovered")
        wait_sweeps(instance, 3)
        assert online(instance, busy.uuid)  # every sweep finds it again
    finally:
        instance.stop()

def test_scan_answer_timeout_in_orch_cf_applies(tmp_path: Path, fakes: list[FakeListener]) -> None:
    busy = start(fakes, InfoPeripheral("Busy_Engine", answer_delay_s=BUSY_ANSWER_DELAY_S))
    instance = discovering(tmp_path, str(busy.port), scan_answer_timeout=0.3)
    try:
        wait_sweeps(instance, 2)
        assert busy.uuid not in peripherals(instance) and scanner_stats(instance)["silent"] == 1
        instance.state_client().request(Op.SET_CONFIG, values={"scan_answer_timeout": 1.8})
        wait_until(lambda: online(instance, busy.uuid), WAIT_S, 0.1, "discovery after raising the timeout")
    finally:
        instance.stop()

def test_a_registered_peripheral_outside_known_ports_follows_its_own_listener(tmp_path: Path, fakes: list[FakeListener]) -> None:
    outside = start(fakes, RegisteringPeripheral(0, "Registered_Only"))
    # known_ports: only our own command port
    instance = discovering(tmp_path, None, full=True, scan_answer_timeout=QUICK_ANSWER_S)
    try:
        outside.orch_port = instance.command_port
        outside.register()
        wait_until(lambda: outside.info_requests >= 1, WAIT_S, 0.1, "a probe of its own port")
        wait_sweeps(instance, 3)
        assert online(instance, outside.uuid) and outside.info_requests >= 2  # probed every sweep, found each time
        outside.stop()
        wait_until(lambda: not online(instance, outside.uuid), WAIT_S, 0.1, "offline once its listener closed")
        assert outside.uuid in peripherals(instance)  # offline, not forgotten
        outside.start()  # the same port again, no new /register
        wait_until(lambda: online(instance, outside.uuid), WAIT_S, 0.1, "online again when it listens again")
    finally:
        instance.stop()

def test_a_stranger_on_a_registered_port_is_neither_discovered_nor_a_sighting(tmp_path: Path, fakes: list[FakeListener]) -> None:
    stranger = start(fakes, InfoPeripheral("Stranger_Engine"))
    instance = discovering(tmp_path, None, scan_answer_timeout=QUICK_ANSWER_S)
    try:
        instance.state_client().request(Op.REGISTER, name="Moved_Away", uuid=UUID_B, port=stranger.port)
        wait_until(lambda: not online(instance, UUID_B), WAIT_S, 0.1, "the registered peripheral offline")
        assert stranger.info_requests >= 1 and stranger.uuid not in peripherals(instance)
    finally:
        instance.stop()

def test_a_registered_peripheral_is_probed_only_while_registered(tmp_path: Path, fakes: list[FakeListener]) -> None:
    listener = start(fakes, InfoPeripheral("Removed_Engine"))
    instance = discovering(tmp_path, None, scan_answer_timeout=QUICK_ANSWER_S)
    try:
        instance.state_client().request(Op.REGISTER, name="Removed_Engine", uuid=listener.uuid, port=listener.port)
        wait_until(lambda: listener.info_requests >= 1, WAIT_S, 0.1, "a probe of the registered port")
        instance.state_client().request(Op.REMOVE_PERIPHERAL, name="Removed_Engine")
        wait_sweeps(instance, 1)
        probes = listener.info_requests
        wait_sweeps(instance, 3)
        assert listener.info_requests == probes and listener.uuid not in peripherals(instance)
    finally:
        instance.stop()

def test_with_probe_registered_ports_off_only_known_ports_are_probed(tmp_path: Path, fakes: list[FakeListener]) -> None:
    listener = start(fakes, InfoPeripheral("Outside_Engine"))
    instance = discovering(tmp_path, None, scan_answer_timeout=QUICK_ANSWER_S, probe_registered_ports=False)
    try:
        instance.state_client().request(Op.REGISTER, name="Outside_Engine", uuid=listener.uuid, port=listener.port)
        wait_sweeps(instance, 3)
        assert listener.info_requests == 0 and listener.connections == 0
    finally:
        instance.stop()

def test_a_peripheral_that_only_sends_data_stays_online(tmp_path: Path) -> None:
    # Data sightings come with the gateway's heartbeat (every HEARTBEAT_INTERVAL_S while figures change): the offline
    # window (6 sweeps of 0.5 s) must be well above that.
    instance = discovering(tmp_path, None, full=True, scan_answer_timeout=QUICK_ANSWER_S, scan_interval=0.5,
                           offline_after_sweeps=6)
    sender = RegisteringPeripheral(instance.command_port, "Terminal_Input_Engine")
    try:
        sender.register()
        sender.stop()  # it never answers on its own port: only its data says it is alive
        until = time.monotonic() + 2 * 6 * 0.5  # twice the offline window
        while time.monotonic() < until:
            sender.send_data("hello")
            assert online(instance, sender.uuid), "went offline while sending data"
            time.sleep(0.1)
        wait_until(lambda: not online(instance, sender.uuid), WAIT_S, 0.1, "offline once the data stopped")
        wait_until(lambda: scanner_stats(instance)["lost_total"] >= 1, WAIT_S, 0.1, "the loss counted")
    finally:
        sender.stop()
        instance.stop()

def test_data_sightings_cost_one_request_per_sweep_not_one_per_message(tmp_path: Path) -> None:
    instance = discovering(tmp_path, None, full=True, scan_answer_timeout=QUICK_ANSWER_S, scan_interval=0.5,
                           offline_after_sweeps=3)
    sender = RegisteringPeripheral(instance.command_port, "Chatty_Engine")
    try:
        sender.register()
        sender.stop()
        state_requests = lambda: next(c["stats"] for c in instance.status()["children"] if c["name"] == "state").get("requests", 0)
        wait_sweeps(instance, 2)
        before, sweeps_before = state_requests(), scanner_stats(instance)["sweeps"]
        messages = 0
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            lines = "".join(f"/data {sender.uuid} burst {messages + i}\n" for i in range(50))
            send_and_close(instance.command_port, lines.encode())
            messages += 50
            time.sleep(0.05)
        wait_sweeps(instance, 2)
        requests, sweeps = state_requests() - before, scanner_stats(instance)["sweeps"] - sweeps_before
        assert online(instance, sender.uuid)
        assert requests <= sweeps + 4, f"{requests} state requests for {messages} messages over {sweeps} sweeps"
    finally:
        sender.stop()
        instance.stop()
