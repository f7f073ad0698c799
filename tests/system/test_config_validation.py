"""orch.cf / routes.cf as users and the original program write them: one wrong value never discards the whole file.

Real instances load the original's own files (tests/support/data/legacy, as it wrote them on a robot) on ephemeral
loopback
ports; the bad values are the ones reported in the files issue. Unit tests check the per-key readers with hypothesis.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from actors.state.store import ConfigStore, merge_records, preflight
from actors.core.protocol import Op
from actors.core.settings import (LOOPBACK_NETWORKS, LOOPBACK_ONLY_SECURITY, SECURITY_KEYS, ConfigError, check_config, check_routes, default_config,
                             parse_networks, parse_ports, read_int, read_networks, read_port_spec, read_positive_number, validate_config,
                             validate_routes)
from actors.state.tables import Tables
from actors.ui.viewmodel import ActivityLine, ActorStatus, Model, Style, activity_rows, status_line
from actors.core.settings import Runtime
from tests.support.instances import (LEGACY_DATA_DIR, READY_TIMEOUT_S, REPO_ROOT, Instance, free_port_range, send_line,
                                     start_instance, wait_until)
from tests.support.fakes import RegisteringPeripheral

LEGACY_DIR = LEGACY_DATA_DIR
LEGACY_PERIPHERALS = 17
LEGACY_ROUTES = 2
LAUNCH_TIMEOUT_S = 20.0
OTHER_LOOPBACK = "127.0.0.2"  # a second loopback address: reaches a 0.0.0.0 listener, not a 127.0.0.1 one


def legacy_config() -> dict[str, Any]:
    return json.loads((LEGACY_DIR / "orch.cf").read_text())


def legacy_routes() -> list[dict[str, Any]]:
    return json.loads((LEGACY_DIR / "routes.cf").read_text())


def write_files(folder: Path, config: dict[str, Any] | str | bytes, routes: list[Any] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(config, bytes):
        (folder / "orch.cf").write_bytes(config)
    else:
        (folder / "orch.cf").write_text(config if isinstance(config, str) else json.dumps(config, indent=4))
    (folder / "routes.cf").write_text(json.dumps(legacy_routes() if routes is None else routes, indent=4))


def on_test_ports(config: dict[str, Any]) -> dict[str, Any]:
    """The legacy config moved to ephemeral ports, scanning only our own command port (never 2000-8000, never 6000)."""
    ports = free_port_range(9)
    return {**config, "command_port": ports[0], "known_ports": str(ports[0]), "data_port_range": f"{ports[1]}-{ports[-1]}",
            "known_hosts": ["127.0.0.1"], "bind_host": "127.0.0.1"}


def launch(tmp_path: Path, only: list[str], wait: bool = True) -> Instance:
    """launch.py --headless on tmp_path/config as it is (its files are not rewritten first, unlike conftest.start_instance)."""
    config_dir = tmp_path / "config"
    out = open(tmp_path / "launch.out", "ab")
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "launch.py"), "--headless", "--config-dir", str(config_dir), "--only", ",".join(only)],
                               cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    instance = Instance(config_dir=config_dir, command_port=0, data_ports=[], process=process, runtime=Runtime.for_config_dir(config_dir))
    if wait:
        try:
            instance.wait_ready(READY_TIMEOUT_S)
        except BaseException:
            instance.stop()
            raise
    return instance


def snapshot(instance: Instance) -> dict[str, Any]:
    return instance.state_client().request(Op.SNAPSHOT, timeout=3.0)


def run_launch(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "launch.py", "--config-dir", str(config_dir), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S, stdin=subprocess.DEVNULL)


def aside(folder: Path, kind: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if f".{kind}-" in p.name)


# ---- the original's own files -------------------------------------------------------------------------------
def test_legacy_files_load_with_every_peripheral_and_route_and_duplicate_names(tmp_path: Path) -> None:
    write_files(tmp_path, legacy_config())
    store = ConfigStore(tmp_path)
    config, routes = store.load()
    tables = Tables(config, routes)
    assert len(tables.peripherals) == LEGACY_PERIPHERALS and len(tables.routes) == LEGACY_ROUTES
    assert [p["name"] for p in tables.peripherals.values()].count("Tools_Engine") == 3
    assert config["script_uuid"] == legacy_config()["script_uuid"]
    assert not store.kept_aside and not store.rejected
    record, _ = tables.register({"name": "Tools_Engine", "uuid": "0a0b0c0d-0000-4000-8000-000000000001", "port": 7001})
    assert record["name"] == "Tools_Engine_1"  # the original's duplicates stay; a new registration still gets a suffix


def test_legacy_files_load_in_a_running_instance(tmp_path: Path) -> None:
    write_files(tmp_path / "config", on_test_ports(legacy_config()))
    instance = launch(tmp_path, ["broker", "state"])
    try:
        state = snapshot(instance)
        assert len(state["peripherals"]) == LEGACY_PERIPHERALS and len(state["routes"]) == LEGACY_ROUTES
        assert state["config"]["script_uuid"] == legacy_config()["script_uuid"]
    finally:
        instance.stop()


ISSUE_BAD_VALUES = [
    ("scan_interval", "5", 5),
    ("offline_after_sweeps", "3", 3),
    ("peripherals", None, []),
    ("known_ports", "6200-6300,", "6200-6300"),
    ("admin_clients", "127.0.0.1", ["127.0.0.1"]),
    ("allowed_clients", "10.0.0.0/8", ["10.0.0.0/8"]),
    ("known_hosts", "localhost", ["localhost"]),
    ("max_connections", "1000", 1000),
]


@pytest.mark.parametrize("key, value, expected", ISSUE_BAD_VALUES)
def test_a_value_that_reads_unambiguously_is_converted_and_nothing_else_is_lost(tmp_path: Path, key: str, value: Any, expected: Any) -> None:
    write_files(tmp_path, {**legacy_config(), key: value})
    store = ConfigStore(tmp_path)
    config, routes = store.load()
    assert config[key] == expected
    assert config["script_uuid"] == legacy_config()["script_uuid"] and len(routes) == LEGACY_ROUTES
    if key != "peripherals":
        assert len(config["peripherals"]) == LEGACY_PERIPHERALS
    assert not store.kept_aside and not store.rejected
    assert any(key in line for level, line in store.notes), store.notes  # a warning names the key


@pytest.mark.parametrize("key, value", [("scan_interval", "often"), ("command_port", 70000), ("known_ports", "x-y"), ("offline_after_sweeps", -1),
                                        ("peripherals", {"a": 1}), ("known_hosts", [1, 2]), ("max_line_bytes", "huge"), ("script_uuid", 5)])
def test_a_value_that_cannot_be_read_is_reset_to_its_default_and_kept_in_a_rejected_file(tmp_path: Path, key: str, value: Any) -> None:
    write_files(tmp_path, {**legacy_config(), key: value})
    store = ConfigStore(tmp_path)
    config, _ = store.load()
    default = {**default_config(), "max_line_bytes": None}[key]
    if key != "script_uuid":
        assert config.get(key) == default
    assert len(config["peripherals"]) == (0 if key == "peripherals" else LEGACY_PERIPHERALS)
    warning = next(line for level, line in store.notes if repr(key) in line and "default" in line)
    assert repr(value)[:20] in warning  # names the key, the value and the default
    [rejected] = aside(tmp_path, "rejected")
    assert json.loads(rejected.read_text())["keys"] == {key: value}
    assert (tmp_path / "orch.cf").read_text() == json.dumps({**legacy_config(), key: value}, indent=4)  # untouched until the keeper writes


def test_one_value_as_a_string_in_a_running_instance_keeps_every_peripheral_and_its_port(tmp_path: Path) -> None:
    config = on_test_ports(legacy_config())
    port = config["command_port"]
    config.update(command_port=str(port), scan_interval="1")
    write_files(tmp_path / "config", config)
    instance = launch(tmp_path, ["broker", "state", "gateway"])
    try:
        assert len(snapshot(instance)["peripherals"]) == LEGACY_PERIPHERALS
        assert "Tools_Engine" in send_line(port, "/list")
        assert snapshot(instance)["config"]["command_port"] == port
    finally:
        instance.stop()


def test_a_peripheral_without_a_name_is_kept_aside_while_the_others_load(tmp_path: Path) -> None:
    config = on_test_ports(legacy_config())
    nameless = dict(config["peripherals"][3])
    del nameless["name"]
    config["peripherals"][3] = nameless
    write_files(tmp_path / "config", config, legacy_routes() + [{"name": "broken", "incoming": 7}])
    instance = launch(tmp_path, ["broker", "state"])
    try:
        state = snapshot(instance)
        assert len(state["peripherals"]) == LEGACY_PERIPHERALS - 1 and len(state["routes"]) == LEGACY_ROUTES
        assert nameless["uuid"] not in {p["uuid"] for p in state["peripherals"]}
        rejected = {p.name.split(".")[0]: json.loads(p.read_text()) for p in aside(instance.config_dir, "rejected")}
        assert rejected["orch"]["peripherals"] == [nameless]
        assert rejected["routes"]["routes"] == [{"name": "broken", "incoming": 7}]
        assert not aside(instance.config_dir, "corrupt")
    finally:
        instance.stop()


# ---- security keys: never a more open value --------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("bind_host", 17), ("bind_host", "not a host!"), ("allowed_clients", ["everyone"]), ("admin_clients", 5),
                                        ("admin_clients", None), ("admin_token", "two words")])
def test_an_unreadable_security_key_refuses_the_launch_with_one_message_and_no_actor(tmp_path: Path, key: str, value: Any) -> None:
    config_dir = tmp_path / "config"
    write_files(config_dir, {**on_test_ports(legacy_config()), key: value})
    before = (config_dir / "orch.cf").read_bytes()
    started = time.monotonic()
    result = run_launch(config_dir, "--headless")
    assert result.returncode != 0 and time.monotonic() - started < LAUNCH_TIMEOUT_S
    assert key in result.stderr and "Traceback" not in result.stderr
    assert "two words" not in result.stderr  # a token is never echoed
    assert result.stderr.count("not starting") == 1
    logs = config_dir / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["supervisor.log"]  # no actor was ever started
    assert "started" not in (logs / "supervisor.log").read_text()
    assert (config_dir / "orch.cf").read_bytes() == before


def test_preflight_accepts_what_loads_and_names_the_bad_security_key(tmp_path: Path) -> None:
    assert preflight(tmp_path) is None  # no file: defaults
    write_files(tmp_path, "{not json")
    assert preflight(tmp_path) is None  # the keeper keeps it aside
    write_files(tmp_path, {"scan_interval": "5", "bind_host": 17})
    assert "'bind_host'" in preflight(tmp_path)


def test_a_non_json_orch_cf_takes_its_security_keys_from_the_last_good_copy(tmp_path: Path) -> None:
    secure = {**legacy_config(), "bind_host": "127.0.0.1", "admin_clients": ["127.0.0.1/32"], "allowed_clients": ["127.0.0.0/8", "10.1.0.0/16"],
              "admin_token": "s3cret-token"}
    write_files(tmp_path, secure)
    ConfigStore(tmp_path).load()
    last_good = tmp_path / "orch.cf.last-good"
    assert last_good.stat().st_mode & 0o077 == 0
    (tmp_path / "orch.cf").write_text('{"bind_host": "127.0.0.1", oops')
    store = ConfigStore(tmp_path)
    config, _ = store.load()
    assert {k: config[k] for k in SECURITY_KEYS} == {k: secure[k] for k in SECURITY_KEYS}
    assert len(store.kept_aside) == 1 and store.kept_aside[0].read_text() == '{"bind_host": "127.0.0.1", oops'
    assert json.loads((tmp_path / "orch.cf").read_text())["admin_clients"] == ["127.0.0.1/32"]


def test_without_a_last_good_copy_a_non_json_orch_cf_means_loopback_only(tmp_path: Path) -> None:
    (tmp_path / "orch.cf").write_bytes(b"\xff\xfe not text")
    store = ConfigStore(tmp_path)
    config, _ = store.load()
    assert {k: config[k] for k in SECURITY_KEYS} == LOOPBACK_ONLY_SECURITY
    assert any("127.0.0.1 only" in line for _, line in store.notes)
    again, _ = ConfigStore(tmp_path).load()  # a restart keeps saying so until bind_host is changed
    assert again["bind_host"] == "127.0.0.1" and again.get("loopback_only_because")
    fixed = {**json.loads((tmp_path / "orch.cf").read_text()), "bind_host": "0.0.0.0"}
    (tmp_path / "orch.cf").write_text(json.dumps(fixed))
    assert "loopback_only_because" not in ConfigStore(tmp_path).load()[0]


def test_a_non_json_orch_cf_in_a_running_instance_keeps_admin_clients_and_bind_host(tmp_path: Path) -> None:
    config = {**on_test_ports(legacy_config()), "admin_clients": ["127.0.0.1/32"], "allowed_clients": ["127.0.0.0/8"]}
    write_files(tmp_path / "config", config)
    first = launch(tmp_path, ["broker", "state"])
    first.stop()
    (tmp_path / "config" / "orch.cf").write_text("this is not JSON")
    second = launch(tmp_path, ["broker", "state"])
    try:
        loaded = snapshot(second)["config"]
        assert (loaded["bind_host"], loaded["admin_clients"], loaded["allowed_clients"]) == ("127.0.0.1", ["127.0.0.1/32"], ["127.0.0.0/8"])
        assert not loaded.get("loopback_only_because")
        assert aside(second.config_dir, "corrupt")[0].read_text() == "this is not JSON"
    finally:
        second.stop()


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def test_without_a_last_good_copy_the_command_port_listens_on_127_0_0_1_only_and_status_says_so(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "orch.cf").write_text("{ broken")
    instance = launch(tmp_path, ["broker", "state"])
    gateway = None
    try:
        loaded = snapshot(instance)["config"]
        assert loaded["bind_host"] == "127.0.0.1" and loaded["admin_clients"] == list(LOOPBACK_NETWORKS)
        ports = free_port_range(3)  # the corrupt file's defaults would use 6000: move to test ports before the gateway starts
        instance.state_client().request(Op.SET_CONFIG, values={"command_port": ports[0], "data_port_range": f"{ports[1]}-{ports[2]}"}, timeout=3.0)
        gateway = subprocess.Popen([sys.executable, "-m", "actors.gateway", "--runtime", instance.runtime.to_json(), "--name", "gateway"],
                                   cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: all(_connects("127.0.0.1", port) for port in ports), 10,
                   message="the command port and both data ports to accept on 127.0.0.1")
        assert not any(_connects(OTHER_LOOPBACK, port) for port in ports)
        status = run_launch(config_dir, "status")
        assert status.returncode == 0 and "WARNING" in status.stdout and "127.0.0.1 only" in status.stdout
        assert "Traceback" not in status.stderr
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=10)
        instance.stop()


def test_the_ui_status_line_says_loopback_only_loudly() -> None:
    notice = "orch.cf's bind_host could not be read: listening on 127.0.0.1 only"
    model = Model(connected=True, ever_connected=True, actors={"state": ActorStatus("state", time.monotonic(), time.time(), stats={"config_notice": notice})})
    line = status_line(model, 200)
    assert line.style == Style.ALERT and "127.0.0.1 only" in line.text


BAD_CONTENTS = {
    "not JSON": lambda config: b"{not json",
    "not text": lambda config: b"\xff\xfe",
    "not an object": lambda config: b"[1]",
    "bind_host 17": lambda config: json.dumps({**config, "bind_host": 17}).encode(),
    "admin_clients 5": lambda config: json.dumps({**config, "admin_clients": 5}).encode(),
    "scan_interval as text": lambda config: json.dumps({**config, "scan_interval": "5"}).encode(),
}


def test_status_never_prints_a_traceback_for_a_bad_file(tmp_path: Path) -> None:
    instance = start_instance(tmp_path, only=["broker", "state", "gateway"])
    try:
        config = instance.read_json("orch.cf")
        for name, make in BAD_CONTENTS.items():
            (instance.config_dir / "orch.cf").write_bytes(make(config))  # a hand edit while running
            result = run_launch(instance.config_dir, "status")
            assert "Traceback" not in result.stderr + result.stdout and result.returncode == 0, name
            assert "running" in result.stdout, name
            # status asks its own instance through the run folder: the figures come whatever the file holds
            assert "peripherals" in result.stdout, result.stdout
    finally:
        instance.stop()


def test_ctl_beside_a_bad_security_key_explains_itself_without_a_traceback(tmp_path: Path) -> None:
    write_files(tmp_path, {"bind_host": 17})
    result = run_launch(tmp_path, "ctl", "/list")  # ctl never reads the command port from orch.cf: it asks through the run folder
    assert result.returncode == 3 and "not running" in result.stderr and "Traceback" not in result.stderr


# ---- per-key readers (hypothesis) ---------------------------------------------------------------------------
ASCII_DIGITS = st.integers(min_value=0, max_value=10**6)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@given(number=st.integers(min_value=1, max_value=65535), pad=st.sampled_from(["", " ", "  "]))
def test_a_port_written_as_text_reads_as_that_port(number: int, pad: str) -> None:
    assert read_int(f"{pad}{number}{pad}", 1, 65535) == number


@given(text=st.text(min_size=1, max_size=8).filter(lambda t: not t.strip().isascii() or not t.strip().isdigit()))
def test_text_that_is_not_ascii_digits_is_never_a_number(text: str) -> None:
    with pytest.raises(ConfigError):
        read_int(text, 0)


@given(value=st.integers(min_value=1, max_value=10**9) | st.floats(min_value=0.001, max_value=1e9))
def test_a_positive_number_as_text_reads_as_that_number(value: float) -> None:
    text = str(value)
    if "e" in text:  # exponent notation is not plain decimal text: refused rather than guessed
        with pytest.raises(ConfigError):
            read_positive_number(text)
        return
    assert read_positive_number(text) == pytest.approx(value)


@given(ranges=st.lists(st.tuples(st.integers(1, 65000), st.integers(0, 400)), min_size=1, max_size=5),
       empties=st.lists(st.sampled_from(["", " ", ""]), max_size=3))
def test_empty_parts_of_a_port_list_are_dropped_and_nothing_is_added(ranges: list[tuple[int, int]], empties: list[str]) -> None:
    parts = [f"{low}-{min(65535, low + width)}" for low, width in ranges]
    clean = ",".join(parts)
    messy = ",".join(parts + empties) + ("," if not empties else "")
    assert parse_ports(read_port_spec(messy)) == parse_ports(clean)


@given(address=st.ip_addresses().map(str))
def test_one_network_as_text_becomes_exactly_that_network(address: str) -> None:
    assert parse_networks(read_networks(address)) == parse_networks([address])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(SECURITY_KEYS), value=json_values)
def test_a_security_key_is_read_exactly_or_refused_never_opened(key: str, value: Any) -> None:
    checked = check_config({key: value})
    if key in checked.insecure:
        assert checked.value[key] == LOOPBACK_ONLY_SECURITY[key]
        assert checked.insecure[key].startswith(repr(key))
        with pytest.raises(ConfigError):
            validate_config({key: value})
        return
    result = checked.value[key]
    if key in ("allowed_clients", "admin_clients"):
        assert parse_networks(result) == parse_networks(value if isinstance(value, list) else [value])
    elif key == "bind_host":
        assert result == value.strip()
    else:
        assert result == (str(value) if isinstance(value, int) else value)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.dictionaries(st.sampled_from(sorted(set(default_config()) - {"script_uuid"}) + ["scan_answer_timeout", "max_connections"]), json_values,
                           max_size=6))
def test_any_json_object_loads_into_a_config_the_strict_validator_accepts(raw: dict[str, Any]) -> None:
    checked = check_config(raw)
    if checked.insecure:
        return
    assert validate_config(checked.value) == checked.value
    assert set(checked.reset) <= set(raw)


@settings(max_examples=200)
@given(records=st.lists(json_values | st.fixed_dictionaries({"name": json_values, "uuid": st.uuids().map(str)}, optional={"port": json_values}),
                        max_size=6))
def test_every_peripheral_record_is_either_loaded_or_kept_aside(records: list[Any]) -> None:
    checked = check_config({"peripherals": records})
    assert len(checked.value["peripherals"]) + len(checked.rejected) == len(records)
    validate_config(checked.value)


@settings(max_examples=200)
@given(routes=st.lists(json_values | st.fixed_dictionaries({"name": st.text(min_size=1, max_size=5), "incoming": st.just("a"), "outgoing": st.just("b")},
                                                         optional={"outgoing_port": json_values, "messages": json_values}), max_size=6))
def test_every_route_record_is_either_loaded_or_kept_aside(routes: list[Any]) -> None:
    checked = check_routes(routes)
    assert len(checked.value) + len(checked.rejected) == len(routes)
    validate_routes(checked.value)


# ---- hand edits while running ---------------------------------------------------------------------------------
HAND_EDIT_DEADLINE_S = 2.0
SEND_EVERY_S = 0.05


def hand_edit(path: Path, change: Any) -> None:
    """Rewrite the file in place, as an editor does."""
    document = json.loads(path.read_text())
    path.write_text(json.dumps(change(document), indent=2))


def routes_info(instance: Instance) -> str:
    return instance.command("/routes info")


def test_a_route_appended_by_hand_while_running_delivers_within_2s_and_survives_the_next_write(orchestrator: Instance) -> None:
    source, sink, other = (RegisteringPeripheral(orchestrator.command_port, name) for name in ("Hand_Source", "Hand_Sink", "Other_Sink"))
    try:
        for peripheral in (source, sink, other):
            peripheral.register()
        route = {"name": "by_hand", "incoming": source.uuid, "outgoing": sink.uuid, "incoming_port": source.port, "outgoing_port": sink.port,
                 "last_used": None}
        hand_edit(orchestrator.config_dir / "routes.cf", lambda routes: routes + [route])
        edited_at = time.monotonic()
        sent = 0

        def delivered() -> bool:
            nonlocal sent
            sent += 1
            source.send_data(f"hello {sent}")
            return any(line.startswith("hello") for line in sink.received())

        wait_until(delivered, HAND_EDIT_DEADLINE_S + 1, SEND_EVERY_S, "delivery along the hand-added route")
        assert time.monotonic() - edited_at <= HAND_EDIT_DEADLINE_S
        assert "by_hand" in routes_info(orchestrator)
        activity = [line["text"] for line in orchestrator.control(Op.CONTROL_ACTIVITY)["activity"]]
        assert any(text.startswith("routes.cf edited by hand") and "by_hand" in text for text in activity), activity[-5:]
        assert orchestrator.command("/routes add by_command Hand_Source Other_Sink").strip() == "Route 'by_command' added successfully."
        names = {r["name"] for r in orchestrator.read_json("routes.cf")}
        assert {"by_hand", "by_command"} <= names  # the next write kept the hand-added route
        before = len(sink.received())
        wait_until(lambda: source.send_data("again") or len(sink.received()) > before, 5, 0.1, "delivery after the write")
    finally:
        for peripheral in (source, sink, other):
            peripheral.stop()


def test_a_hand_edit_that_does_not_parse_is_kept_aside_and_the_file_rewritten(orchestrator: Instance) -> None:
    sink = RegisteringPeripheral(orchestrator.command_port, "Keep_Sink")
    try:
        sink.register()
        path = orchestrator.config_dir / "orch.cf"
        path.write_text('{"peripherals": [ oops')
        rejected = wait_until(lambda: aside(orchestrator.config_dir, "rejected"), 3, message="the edit to be kept aside")
        assert rejected[0].read_text() == '{"peripherals": [ oops'
        wait_until(lambda: _parses(path), 3, message="orch.cf rewritten from the running state")
        assert [p["name"] for p in json.loads(path.read_text())["peripherals"]] == ["Keep_Sink"]
        assert "Keep_Sink" in orchestrator.command("/list")
        entry = wait_until(lambda: _unusable_edit_line(orchestrator, rejected[0].name), 3, message="the activity line")
        assert entry["actor"] == "state" and entry["level"] == "ERROR"
        # the UI shows the same line, as an alert, in its activity pane (busview builds these lines from the feed)
        _, [row] = activity_rows([ActivityLine(entry["ts"], entry["actor"], entry["level"], entry["text"])], 200)
        assert row.style == Style.ALERT and rejected[0].name in row.text
    finally:
        sink.stop()


def _unusable_edit_line(instance: Instance, kept_as: str) -> dict[str, Any] | None:
    """The activity line that says an edit could not be used and names the file it was kept in."""
    for entry in instance.control(Op.CONTROL_ACTIVITY)["activity"]:
        if entry["text"].startswith("orch.cf was edited by hand but cannot be used") and kept_as in entry["text"]:
            return entry
    return None


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def test_a_config_key_edited_by_hand_is_published_and_maintained_fields_are_not_rolled_back(orchestrator: Instance) -> None:
    source, sink = RegisteringPeripheral(orchestrator.command_port, "Count_Source"), RegisteringPeripheral(orchestrator.command_port, "Count_Sink")
    try:
        source.register()
        sink.register()
        assert "added" in orchestrator.command("/routes add counted Count_Source Count_Sink")
        stale = json.loads((orchestrator.config_dir / "routes.cf").read_text())  # an editor's buffer, opened now
        wait_until(lambda: source.send_data("x") or len(sink.received()) >= 3, 5, 0.1, "some deliveries")
        wait_until(lambda: orchestrator.read_json("routes.cf")[0].get("messages", 0) >= 1, 5, message="the counter on disk")
        stale[0]["outgoing_port"] = sink.port  # unchanged value; counters in the buffer are stale (0)
        (orchestrator.config_dir / "routes.cf").write_text(json.dumps(stale))
        hand_edit(orchestrator.config_dir / "orch.cf", lambda config: {**config, "offline_after_sweeps": 7})
        client = orchestrator.state_client()
        wait_until(lambda: client.request(Op.SNAPSHOT, timeout=3.0)["config"]["offline_after_sweeps"] == 7, 3, message="the edited key")
        routes = client.request(Op.SNAPSHOT, timeout=3.0)["routes"]
        assert routes[0]["messages"] >= 1  # the stale 0 did not roll the counter back
    finally:
        source.stop()
        sink.stop()


def test_merge_records_keeps_user_changes_and_running_maintained_fields() -> None:
    base = [{"name": "a", "port": 1, "messages": 5}, {"name": "b", "port": 2, "messages": 0}, {"name": "gone", "port": 3}]
    ours = [{"name": "a", "port": 1, "messages": 9}, {"name": "b", "port": 2, "messages": 4}, {"name": "gone", "port": 3},
            {"name": "new_by_command", "port": 4}]
    theirs = [{"name": "a", "port": 10, "messages": 0}, {"name": "b", "port": 2, "messages": 0}, {"name": "hand", "port": 5}]
    merged = {r["name"]: r for r in merge_records(base, theirs, ours, [], "name", ("messages",))}
    assert merged["a"] == {"name": "a", "port": 10, "messages": 9}
    assert merged["b"] == {"name": "b", "port": 2, "messages": 4}
    assert "gone" not in merged and merged["hand"] == {"name": "hand", "port": 5} and "new_by_command" in merged


def test_a_record_broken_by_hand_is_kept_aside_not_removed(tmp_path: Path) -> None:
    write_files(tmp_path, legacy_config())
    store = ConfigStore(tmp_path)
    config, routes = store.load()
    broken = legacy_routes()
    del broken[0]["outgoing"]
    (tmp_path / "routes.cf").write_text(json.dumps(broken))
    assert store.edited_outside() == [tmp_path / "routes.cf"]
    edit = store.merge_outside_edits(config, routes)
    assert [r["name"] for r in edit.routes] == ["asr_llm", "llm_tts"]
    assert json.loads(store.rejected[-1].read_text())["routes"] == [broken[0]]
    assert store.edited_outside() == []


def test_an_edit_landing_between_the_check_and_the_rename_is_merged_at_the_next_check(tmp_path: Path) -> None:
    write_files(tmp_path, legacy_config())
    store = ConfigStore(tmp_path)
    config, routes = store.load()
    assert store.edited_outside() == []  # the check before the write
    late = legacy_routes() + [{"name": "late", "incoming": routes[0]["incoming"], "outgoing": routes[0]["outgoing"]}]
    (tmp_path / "routes.cf").write_text(json.dumps(late))  # lands before our rename
    routes[0]["messages"] = 3
    store.save(config, routes)
    assert "late" not in (tmp_path / "routes.cf").read_text()  # our write replaced it ...
    assert store.edited_outside() == [tmp_path / "routes.cf"]  # ... but it was caught
    edit = store.merge_outside_edits(config, routes)
    assert [r["name"] for r in edit.routes] == ["asr_llm", "llm_tts", "late"] and edit.routes[0]["messages"] == 3
    assert store.edited_outside() == []


def test_a_legacy_route_to_an_unknown_uuid_loads_as_it_is(tmp_path: Path) -> None:
    routes = legacy_routes() + [{"name": "to_nowhere", "incoming": "9f6e64a3-031c-40db-9793-cd8076951fd6",
                                 "outgoing": "00000000-dead-4bee-8000-000000000000", "incoming_port": 6207, "outgoing_port": 6999, "last_used": 1.5}]
    write_files(tmp_path, legacy_config(), routes)
    store = ConfigStore(tmp_path)
    config, loaded = store.load()
    assert [r["name"] for r in loaded] == ["asr_llm", "llm_tts", "to_nowhere"] and loaded[2]["outgoing_port"] == 6999
    assert not store.rejected and not store.notes


def test_fixing_bind_host_by_hand_while_running_ends_loopback_only(tmp_path: Path) -> None:
    (tmp_path / "orch.cf").write_text("not json")
    store = ConfigStore(tmp_path)
    config, routes = store.load()
    assert config.get("loopback_only_because")
    hand_edit(tmp_path / "orch.cf", lambda document: {**document, "bind_host": "0.0.0.0"})
    edit = store.merge_outside_edits(config, routes)
    assert edit.config["bind_host"] == "0.0.0.0" and "loopback_only_because" not in edit.config
