"""The state keeper's rules, without sockets: registration, names, data ports, routes, reset."""
import pytest

from actors.core.errors import BadArguments, DuplicateRoute, UnknownPeripheral, UnknownRoute
from actors.core.settings import default_config
from actors.state.tables import Tables

U1, U2, U3 = ("11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222", "33333333-3333-3333-3333-333333333333")


@pytest.fixture
def tables():
    config = default_config()
    config["data_port_range"] = "7001-7003"
    return Tables(config, [], clock=lambda: 100.0)


def register(tables, name, uuid, port=6201):
    record, _ = tables.register({"name": name, "uuid": uuid, "port": port})
    return record


def test_register_assigns_distinct_free_data_ports(tables):
    ports = [register(tables, f"P{i}", u)["data_port"] for i, u in enumerate((U1, U2, U3))]
    assert ports == [7001, 7002, 7003]


def test_data_ports_are_shared_least_first_once_all_are_taken(tables):
    for i, u in enumerate((U1, U2, U3)):
        register(tables, f"P{i}", u)
    extra = register(tables, "P9", "44444444-4444-4444-4444-444444444444")
    assert extra["data_port"] in (7001, 7002, 7003)


def test_duplicate_names_get_numeric_suffixes_starting_at_one(tables):
    names = [register(tables, "TTS", u)["name"] for u in (U1, U2, U3)]
    assert names == ["TTS", "TTS_1", "TTS_2"]


def test_reregistering_a_uuid_keeps_name_data_port_and_routes(tables):
    first = register(tables, "ASR", U1, 6201)
    register(tables, "LLM", U2)
    tables.add_route({"name": "r", "incoming": "ASR", "outgoing": "LLM"})
    again = register(tables, "ASR", U1, 6205)
    assert (again["name"], again["data_port"], again["port"]) == ("ASR", first["data_port"], 6205)
    assert tables.routes["r"]["incoming_port"] == 6205


def test_register_rejects_bad_uuid_and_port(tables):
    with pytest.raises(BadArguments):
        register(tables, "X", "not-a-uuid")
    with pytest.raises(BadArguments):
        tables.register({"name": "X", "uuid": U1, "port": "http"})


def test_routes_need_known_names_and_unique_route_names(tables):
    register(tables, "ASR", U1)
    register(tables, "LLM", U2)
    route, changes = tables.add_route({"name": "r1", "incoming": "ASR", "outgoing": "LLM"})
    assert (route["incoming"], route["outgoing"], route["last_used"]) == (U1, U2, None)
    assert changes and changes[0][0] == "route"
    with pytest.raises(DuplicateRoute):
        tables.add_route({"name": "r1", "incoming": "ASR", "outgoing": "LLM"})
    with pytest.raises(UnknownPeripheral):
        tables.add_route({"name": "r2", "incoming": "ASR", "outgoing": "Nobody"})
    with pytest.raises(UnknownRoute):
        tables.remove_route({"name": "r9"})


def test_removing_a_peripheral_removes_its_routes_and_says_so(tables):
    register(tables, "ASR", U1)
    register(tables, "LLM", U2)
    tables.add_route({"name": "r1", "incoming": "ASR", "outgoing": "LLM"})
    result, changes = tables.remove_peripheral({"name": "LLM"})
    assert result["removed_routes"] == ["r1"] and not tables.routes
    assert ("route", "r1", None) in changes


def test_usage_adds_counters_and_keeps_the_latest_last_used(tables):
    register(tables, "ASR", U1)
    register(tables, "LLM", U2)
    tables.add_route({"name": "r1", "incoming": "ASR", "outgoing": "LLM"})
    tables.route_usage({"usage": {"r1": {"messages": 3, "bytes": 30, "last_used": 50.0}, "gone": {"messages": 1}}})
    tables.route_usage({"usage": {"r1": {"messages": 2, "bytes": 20, "last_used": 40.0, "rate": 2.5}}})
    route = tables.routes["r1"]
    assert (route["messages"], route["bytes"], route["last_used"], route["rate"]) == (5, 50, 50.0, 2.5)


def test_lost_marks_offline_but_keeps_routes(tables):
    register(tables, "ASR", U1)
    register(tables, "LLM", U2)
    tables.add_route({"name": "r1", "incoming": "ASR", "outgoing": "LLM"})
    record, _ = tables.lost({"uuid": U1})
    assert record["online"] is False and "r1" in tables.routes


def test_set_config_validates_as_a_whole(tables):
    tables.set_config({"values": {"known_ports": "6200-6210,7000"}})
    assert tables.config["known_ports"] == "6200-6210,7000"
    with pytest.raises(BadArguments):
        tables.set_config({"values": {"known_ports": "nope"}})
    with pytest.raises(BadArguments):
        tables.set_config({"values": {"script_uuid": "x"}})


def test_reset_clears_everything_but_keeps_how_the_instance_is_reached(tables):
    register(tables, "ASR", U1)
    old_uuid = tables.config["script_uuid"]
    tables.reset()
    assert not tables.peripherals and not tables.routes
    assert tables.config["script_uuid"] != old_uuid and tables.config["data_port_range"] == "7001-7003"


def test_documents_keep_every_documented_key(tables):
    register(tables, "ASR", U1)
    register(tables, "LLM", U2)
    tables.add_route({"name": "r1", "incoming": "ASR", "outgoing": "LLM"})
    config = tables.config_document()
    assert {"known_ports", "scan_interval", "command_port", "data_port_range", "peripherals", "script_uuid"} <= set(config)
    assert {"name", "uuid", "config", "port", "last_seen", "data_port"} <= set(config["peripherals"][0])
    assert {"name", "incoming", "outgoing", "incoming_port", "outgoing_port", "last_used"} <= set(tables.routes_document()[0])


def test_route_rules_are_validated_when_set_and_stored_as_extra_keys(tables):
    register(tables, "ASR", U1)
    register(tables, "LLM", U2)
    tables.add_route({"name": "r1", "incoming": "ASR", "outgoing": "LLM"})
    with pytest.raises(BadArguments):
        tables.set_route_rule({"name": "r1", "key": "filter", "rule": "re:("})
    tables.set_route_rule({"name": "r1", "key": "filter", "rule": "re:^FINAL"})
    document = tables.routes_document()[0]
    assert document["filter"] == "re:^FINAL" and document["incoming"] == U1
    tables.set_route_rule({"name": "r1", "key": "clear"})
    assert "filter" not in tables.routes["r1"]
