"""Small requests cannot blow up the files or the state keeper (issue 12, section 4).

Limits on a peripheral's stored config (size and depth), on peripherals per host outside
admin_clients, and files written pretty only at the top, so a deep config stays small on disk.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings, strategies as st

from actors.state.store import ConfigStore, readable_json
from actors.core.errors import LimitReached
from actors.core.protocol import Op
from actors.core.settings import TUNABLE_DEFAULTS, default_config
from actors.state.tables import Tables
from actors.core.records import nesting_depth
from tests.support.instances import Instance, send_lines, start_instance, wait_until
from tests.support.records import deep, uid

DEFAULT_DEPTH = int(TUNABLE_DEFAULTS["max_peripheral_config_depth"])
HOST_LIMIT = 5
FLOOD = HOST_LIMIT + 3
ISSUE_DEPTH = 970  # the 5.8 KB /config of the issue, written as 3.8 MB by indent=4
LEGACY_DEPTH = 600  # deep enough for megabytes with indent=4, shallow enough for json under pytest's stack
ON_DISK_SLACK_BYTES = 4096  # orch.cf around one peripheral: settings and the record's other fields


def reference_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                           max_leaves=40)


# ---- the rules -----------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(json_values)
def test_nesting_depth_matches_the_recursive_definition(value: Any) -> None:
    assert nesting_depth(value, 1000) == reference_depth(value)


@pytest.fixture
def tables() -> Tables:
    config = default_config()
    config.update({"data_port_range": "7001-7003", "max_peripherals_per_host": HOST_LIMIT})
    tables = Tables(config, [], clock=lambda: 100.0)
    tables.register({"name": "Cam", "uuid": uid(1), "port": 6201, "host": "127.0.0.2", "admin": False})
    return tables


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=3 * DEFAULT_DEPTH))
def test_a_config_deeper_than_the_limit_is_refused_and_keeps_the_old_one(levels: int) -> None:
    config = default_config()
    tables = Tables(config, [], clock=lambda: 100.0)
    tables.register({"name": "Cam", "uuid": uid(1), "port": 6201})
    request = {"uuid": uid(1), "config": deep(levels), "host": "127.0.0.1", "admin": True}
    if levels <= DEFAULT_DEPTH:
        assert tables.set_peripheral_config(request)[0]["config"] == deep(levels)
    else:
        with pytest.raises(LimitReached, match="max_peripheral_config_depth"):
            tables.set_peripheral_config(request)
        assert tables.peripherals[uid(1)]["config"] == {}


def test_a_config_bigger_than_the_limit_is_refused(tables: Tables) -> None:
    limit = int(TUNABLE_DEFAULTS["max_peripheral_config_bytes"])
    with pytest.raises(LimitReached, match="max_peripheral_config_bytes"):
        tables.set_peripheral_config({"uuid": uid(1), "config": {"blob": "x" * limit}, "host": "127.0.0.2"})
    tables.config["max_peripheral_config_bytes"] = 2 * limit  # configurable in orch.cf
    tables.set_peripheral_config({"uuid": uid(1), "config": {"blob": "x" * limit}, "host": "127.0.0.2"})


def test_a_host_outside_admin_clients_registers_at_most_its_quota(tables: Tables) -> None:
    for n in range(2, HOST_LIMIT + 1):
        tables.register({"name": f"P{n}", "uuid": uid(n), "port": 6200 + n, "host": "127.0.0.2", "admin": False})
    with pytest.raises(LimitReached, match="max_peripherals_per_host"):
        tables.register({"name": "One_too_many", "uuid": uid(99), "port": 6299, "host": "127.0.0.2", "admin": False})
    tables.register({"name": "Again", "uuid": uid(2), "port": 6250, "host": "127.0.0.2", "admin": False})  # re-registering is fine
    tables.register({"name": "Other", "uuid": uid(98), "port": 6298, "host": "127.0.0.3", "admin": False})  # another host has its own
    tables.register({"name": "Admin", "uuid": uid(97), "port": 6297, "host": "127.0.0.2", "admin": True})  # an admin is not limited


# ---- the files ------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=5))
def test_files_stay_plain_json(document: dict[str, Any]) -> None:
    assert json.loads(readable_json(document)) == document


def test_a_deep_legacy_config_is_written_compactly_and_the_top_stays_readable(tmp_path: Path) -> None:
    """An orch.cf that already holds the issue's deep config (loaded, never refused) is rewritten small, not as megabytes."""
    config = default_config()
    value = {"a": json.loads("[" * LEGACY_DEPTH + "]" * LEGACY_DEPTH)}
    config["peripherals"] = [{"name": "Deep", "uuid": uid(1), "config": value, "port": 6201, "last_seen": None, "data_port": 6001}]
    store = ConfigStore(tmp_path)
    store.save(config, [])
    text = store.config_path.read_text()
    compact = len(json.dumps(value, separators=(",", ":")))
    assert len(text) < compact + ON_DISK_SLACK_BYTES
    assert '\n    "known_ports": "6200-6300",\n' in text and '\n        {"name": "Deep", "uuid": ' in text
    loaded, _ = store.load()
    assert loaded["peripherals"][0]["config"] == value


# ---- end to end -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    instance = start_instance(tmp_path_factory.mktemp("limits"), config={"admin_clients": ["127.0.0.1/32"],
                                                                          "max_peripherals_per_host": HOST_LIMIT})
    try:
        yield instance
    finally:
        instance.stop()


def test_a_registration_flood_from_one_host_stops_at_its_quota(limited: Instance) -> None:
    replies = [send_lines(limited.command_port, [f"/register Flood {uid(100 + n)} {7000 + n}"], source="127.0.0.2")
               for n in range(FLOOD)]
    assert all(reply.startswith("/ack ") for reply in replies[:HOST_LIMIT])
    for reply in replies[HOST_LIMIT:]:
        assert reply.startswith("Error: ") and "max_peripherals_per_host" in reply
    admin = [send_lines(limited.command_port, [f"/register Local {uid(200 + n)} {7100 + n}"], source="127.0.0.1")
             for n in range(FLOOD)]
    assert all(reply.startswith("/ack ") for reply in admin)


def test_a_deep_config_gets_a_clear_error_and_never_reaches_the_file(limited: Instance) -> None:
    """The issue's 5.8 KB /config nested 970 deep: refused with the limit's name; orch.cf keeps its size."""
    uuid = uid(300)
    assert send_lines(limited.command_port, [f"/register Deep {uuid} 7300"], source="127.0.0.1").startswith("/ack ")
    before = (limited.config_dir / "orch.cf").stat().st_size
    text = "[" * ISSUE_DEPTH + "]" * ISSUE_DEPTH
    reply = send_lines(limited.command_port, [f"/config {uuid}", '{"a": ' + text + "}", "EOF"], source="127.0.0.1")
    assert reply.startswith("Error: ") and ("max_peripheral_config_depth" in reply or "nested too deep" in reply)
    limited_deep = json.dumps(deep(DEFAULT_DEPTH))
    reply = send_lines(limited.command_port, [f"/config {uuid}", limited_deep, "EOF"], source="127.0.0.1")
    assert reply.strip() == "Config stored for Deep."
    record = next(p for p in limited.state_client().request(Op.SNAPSHOT)["peripherals"] if p["uuid"] == uuid)
    assert record["config"] == deep(DEFAULT_DEPTH)
    assert (limited.config_dir / "orch.cf").stat().st_size < before + len(limited_deep) + ON_DISK_SLACK_BYTES


def test_orch_cf_rendered_piecemeal_equals_a_full_render_of_the_state(limited: Instance) -> None:
    """The keeper renders only changed peripherals again; the file must still be exactly the current state."""
    uuid = uid(400)
    for port in (7400, 7401):
        reply = send_lines(limited.command_port, [f"/register Piece {uuid} {port}"], source="127.0.0.1")
        assert reply.startswith("/ack ")
    send_lines(limited.command_port, [f"/exit {uuid}"], source="127.0.0.1")
    snapshot = limited.state_client().request(Op.SNAPSHOT)

    def written() -> dict[str, Any] | None:
        on_disk = json.loads((limited.config_dir / "orch.cf").read_text())
        return on_disk if on_disk["peripherals"] == snapshot["peripherals"] else None

    on_disk = wait_until(written, message="orch.cf to show the last change")
    assert (limited.config_dir / "orch.cf").read_text() == readable_json(on_disk) + "\n"
