"""Routing rules end to end: real processes (launch.py), peripherals that register and send like real ones.

Rules are set with the ``/routes set`` command on the command port, payloads go in on a data port,
and fake sinks record what the router delivered. One running system serves the module; each test
uses its own peripherals and routes.
"""
from __future__ import annotations

import json
import time
import uuid as uuidlib
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.instances import Instance, start_instance, wait_until
from tests.support.fakes import LineSink, RegisteringPeripheral, register

DELIVERY_TIMEOUT_S = 5.0
BARRIER_TIMEOUT_S = 5.0
BARRIER_RESEND_S = 0.05
# The keys docs/protocol.md section 6 documents for a route in routes.cf (the original knows only these).
DOCUMENTED_ROUTE_KEYS = ("name", "incoming", "outgoing", "incoming_port", "outgoing_port", "last_used")


class System:
    """One running orchestrator, with helpers to add peripherals, routes and rules through its command port."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.sources: list[RegisteringPeripheral] = []
        self.sinks: list[LineSink] = []
        self.barriers = 0
        self.sync_source = self.source("Sync_Source")
        self.sync_sink = self.sink("Sync_Sink")
        self.route("sync", "Sync_Source", "Sync_Sink")

    def command(self, line: str) -> str:
        return self.instance.command(line).strip()

    def source(self, name: str) -> RegisteringPeripheral:
        peripheral = RegisteringPeripheral(self.instance.command_port, name)
        self.sources.append(peripheral)
        peripheral.register()
        return peripheral

    def sink(self, name: str) -> LineSink:
        sink = LineSink().start()
        self.sinks.append(sink)
        ack = register(self.instance.command_port, name, str(uuidlib.uuid4()), sink.port)
        assert ack.startswith("/ack "), ack
        return sink

    def route(self, name: str, incoming: str, outgoing: str, **rules: str) -> None:
        assert self.command(f"/routes add {name} {incoming} {outgoing}") == f"Route '{name}' added successfully."
        for key, rule in rules.items():
            assert self.command(f"/routes set {name} {key} {rule}") == f"Route '{name}' {key} set: {rule}"

    def barrier(self) -> None:
        """Return once the router has applied every change made so far.

        State updates reach the router in order, so when the sync route's newest transform shows in
        what the sync sink receives, every earlier rule is in force there too.
        """
        self.barriers += 1
        marker = f"barrier-{self.barriers}"
        assert self.command(f"/routes set sync transform template:{marker} {{payload}}").startswith("Route 'sync' transform set")
        expected = f"{marker} x".encode()

        def arrived() -> bool:
            if expected in self.sync_sink.snapshot():
                return True
            self.sync_source.send_on_data_port(["x"])
            return False
        wait_until(arrived, BARRIER_TIMEOUT_S, BARRIER_RESEND_S, "the router to apply the latest rules")

    def routes_cf(self) -> list[dict]:
        path = self.instance.config_dir / "routes.cf"
        return json.loads(path.read_text()) if path.exists() else []

    def close(self) -> None:
        for peripheral in self.sources:
            peripheral.stop()
        for sink in self.sinks:
            sink.stop()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    instance = start_instance(tmp_path_factory.mktemp("rules"))
    built = None
    try:
        built = System(instance)
        yield built
    finally:
        if built is not None:
            built.close()
        instance.stop()


def lines(sink: LineSink, count: int) -> list[str]:
    """Wait until the sink has at least count lines; all of them (send_and_settle checks nothing more arrives)."""
    wait_until(lambda: sink.count() >= count, DELIVERY_TIMEOUT_S, message=f"{count} lines at the sink")
    return [line.decode() for line in sink.snapshot()]


def send_and_settle(system: System, source: RegisteringPeripheral, payloads: list[str], sinks_and_counts: list[tuple[LineSink, int]]) -> list[list[str]]:
    """Send payloads (one ordered data-port connection) and return what each sink got once it has its count."""
    source.send_on_data_port(payloads)
    got = [lines(sink, count) for sink, count in sinks_and_counts]
    system.barrier()  # anything delivered late would be in the sinks by now (same source, same router: in order)
    assert [[line.decode() for line in sink.snapshot()] for sink, _ in sinks_and_counts] == got
    return got


ASR_STREAM = [
    json.dumps({"text": "turn on", "final": False}),
    json.dumps({"text": "turn on the light", "final": True, "confidence": 0.93}),
    json.dumps({"text": "thanks", "final": False}),
    json.dumps({"text": "thank you", "final": True, "confidence": 0.71}),
]


# ---- each rule kind ------------------------------------------------------------------------------
def test_regex_filter_delivers_only_matching_lines(system: System) -> None:
    source, sink = system.source("Rx_Source"), system.sink("Rx_Sink")
    system.route("rx", "Rx_Source", "Rx_Sink", filter="re:^FINAL:")
    system.barrier()
    got, = send_and_settle(system, source, ["PARTIAL: turn", "FINAL: turn on the light", "noise", "FINAL: thanks"], [(sink, 2)])
    assert got == ["FINAL: turn on the light", "FINAL: thanks"]


def test_json_field_filter_delivers_only_final_asr_results(system: System) -> None:
    source, sink = system.source("Asr_Source"), system.sink("Llm_Sink")
    system.route("asr_final", "Asr_Source", "Llm_Sink", filter="json:final == true")
    system.barrier()
    got, = send_and_settle(system, source, ASR_STREAM, [(sink, 2)])
    assert [json.loads(line)["text"] for line in got] == ["turn on the light", "thank you"]


def test_json_comparison_filter(system: System) -> None:
    source, sink = system.source("Conf_Source"), system.sink("Conf_Sink")
    system.route("confident", "Conf_Source", "Conf_Sink", filter="json:confidence >= 0.9")
    system.barrier()
    got, = send_and_settle(system, source, ASR_STREAM, [(sink, 1)])
    assert json.loads(got[0])["confidence"] == 0.93


def test_sub_transform_strips_a_prefix(system: System) -> None:
    source, sink = system.source("Sub_Source"), system.sink("Tts_Sink")
    system.route("strip", "Sub_Source", "Tts_Sink", transform="sub:/^FINAL: //")
    system.barrier()
    got, = send_and_settle(system, source, ["FINAL: hello there", "no prefix here"], [(sink, 2)])
    assert got == ["hello there", "no prefix here"]


def test_template_transform_with_payload_source_and_field(system: System) -> None:
    source, sink = system.source("Tpl_Source"), system.sink("Tpl_Sink")
    system.route("tpl", "Tpl_Source", "Tpl_Sink", transform="template:[{source}] {json:text} <{ts}>")
    system.barrier()
    before = time.time()
    got, = send_and_settle(system, source, [json.dumps({"text": "hi  there"})], [(sink, 1)])
    head, _, stamp = got[0].partition(" <")
    assert head == "[Tpl_Source] hi  there"  # {source} is the source peripheral's name
    assert before - 1 <= float(stamp.rstrip(">")) <= time.time() + 1


def test_json_pick_and_set(system: System) -> None:
    source, picked, marked = system.source("Js_Source"), system.sink("Pick_Sink"), system.sink("Set_Sink")
    system.route("pick", "Js_Source", "Pick_Sink", transform="json:pick text")
    system.route("mark", "Js_Source", "Set_Sink", transform='json:set meta.routed = "mark"')
    system.barrier()
    document = {"text": "turn on the light", "final": True, "meta": {"lang": "en"}}
    got_pick, got_set = send_and_settle(system, source, [json.dumps(document)], [(picked, 1), (marked, 1)])
    assert got_pick == ["turn on the light"]
    assert json.loads(got_set[0]) == {**document, "meta": {"lang": "en", "routed": "mark"}}


def test_filter_and_transform_together(system: System) -> None:
    source, sink = system.source("Both_Source"), system.sink("Both_Sink")
    system.route("both", "Both_Source", "Both_Sink", filter="json:final == true", transform="json:pick text")
    system.barrier()
    got, = send_and_settle(system, source, ASR_STREAM, [(sink, 2)])
    assert got == ["turn on the light", "thank you"]


# ---- conditional routing -------------------------------------------------------------------------
def test_two_routes_from_one_source_with_different_filters_route_by_content(system: System) -> None:
    source, lights, music = system.source("Intent_Source"), system.sink("Lights_Sink"), system.sink("Music_Sink")
    system.route("to_lights", "Intent_Source", "Lights_Sink", filter="json:intent == lights")
    system.route("to_music", "Intent_Source", "Music_Sink", filter="json:intent == music")
    system.barrier()
    intents = ["lights", "music", "weather", "lights", "music", "music"]
    payloads = [json.dumps({"intent": intent, "n": n}) for n, intent in enumerate(intents)]
    got_lights, got_music = send_and_settle(system, source, payloads, [(lights, 2), (music, 3)])
    assert [json.loads(line)["n"] for line in got_lights] == [0, 3]
    assert [json.loads(line)["n"] for line in got_music] == [1, 4, 5]


def test_clearing_rules_makes_the_route_plain_again(system: System) -> None:
    source, sink = system.source("Clr_Source"), system.sink("Clr_Sink")
    system.route("clr", "Clr_Source", "Clr_Sink", filter="re:^keep", transform="sub:/keep/kept/")
    assert system.command("/routes set clr clear") == "Route 'clr' rules cleared."
    system.barrier()
    got, = send_and_settle(system, source, ["keep 1", "drop 2"], [(sink, 2)])
    assert got == ["keep 1", "drop 2"]


# ---- refusal and robustness ----------------------------------------------------------------------
@pytest.mark.parametrize("key,rule,why", [
    ("filter", "re:(unclosed", "bad regular expression"),
    ("filter", "json:final ==", "bad JSON filter"),
    ("filter", "glob:*.txt", "unknown filter kind"),
    ("transform", "sub:/a/b", "sub needs"),
    ("transform", r"sub:/a/\9/", "bad substitution"),
    ("transform", "json:drop text", "unknown JSON transform"),
    ("transform", "json:set text", "json:set needs"),
])
def test_invalid_rules_are_refused_when_set_and_nothing_is_stored(system: System, key: str, rule: str, why: str) -> None:
    if "Bad_Source" not in system.command("/list"):
        system.source("Bad_Source")
        system.sink("Bad_Sink")
        system.route("bad", "Bad_Source", "Bad_Sink")
    reply = system.command(f"/routes set bad {key} {rule}")
    assert reply.startswith(f"Error: invalid {key} for route 'bad':") and why in reply, reply
    assert "Filter:" not in system.command("/routes info").split("Route Name: bad")[1].split("Route Name:")[0]


def test_rules_on_an_unknown_route_are_refused(system: System) -> None:
    assert system.command("/routes set no_such_route filter re:x") == "Route 'no_such_route' not found."


def test_a_payload_that_is_not_json_is_counted_filtered_and_the_router_keeps_going(system: System) -> None:
    source, sink = system.source("Raw_Source"), system.sink("Raw_Sink")
    system.route("raw", "Raw_Source", "Raw_Sink", filter="json:final == true")
    system.barrier()
    router_pid = system.instance.child_pid("router-1")
    got, = send_and_settle(system, source, ["plain text, not JSON", "{broken", json.dumps({"final": True, "n": 1}), "[1, 2"], [(sink, 1)])
    assert json.loads(got[0]) == {"final": True, "n": 1}

    def section() -> str:
        return system.command("/routes info").split("Route Name: raw")[1].split("Route Name:")[0]
    wait_until(lambda: "Filtered: 3" in section(), DELIVERY_TIMEOUT_S, message=f"3 filtered in /routes info:\n{section()}")
    assert "Filter: json:final == true" in section()
    wait_until(lambda: any(r["name"] == "raw" and r.get("filtered") == 3 for r in system.routes_cf()), DELIVERY_TIMEOUT_S,
               message="the filtered counter in routes.cf")
    assert system.instance.child_pid("router-1") == router_pid  # the same router process, still delivering
    got, = send_and_settle(system, source, [json.dumps({"final": True, "n": 2})], [(sink, 2)])
    assert json.loads(got[1])["n"] == 2


# ---- the routes file -----------------------------------------------------------------------------
def test_routes_cf_with_rules_loads_in_a_reader_that_knows_only_the_documented_keys(system: System) -> None:
    system.source("File_Source")
    system.sink("File_Sink")
    system.route("filed", "File_Source", "File_Sink", filter="json:final == true", transform="json:pick text")
    wait_until(lambda: any(r["name"] == "filed" and r.get("transform") for r in system.routes_cf()), DELIVERY_TIMEOUT_S,
               message="the rules in routes.cf")
    raw = (system.instance.config_dir / "routes.cf").read_text()
    routes = json.loads(raw)
    original_view = [{key: route[key] for key in DOCUMENTED_ROUTE_KEYS} for route in routes]  # KeyError if one were missing
    filed = next(route for route in original_view if route["name"] == "filed")
    peripherals = {p["name"]: p for p in system.instance.read_json("orch.cf")["peripherals"]}
    assert filed["incoming"] == peripherals["File_Source"]["uuid"] and filed["outgoing"] == peripherals["File_Sink"]["uuid"]
    assert filed["incoming_port"] == peripherals["File_Source"]["port"] and filed["outgoing_port"] == peripherals["File_Sink"]["port"]
    assert filed["last_used"] is None or isinstance(filed["last_used"], (int, float))
    stored = next(route for route in routes if route["name"] == "filed")
    assert stored["filter"] == "json:final == true" and stored["transform"] == "json:pick text"  # extra keys, beside the documented ones


def test_a_routes_file_without_rules_loads_in_ours_and_hand_written_rules_apply(tmp_path: Path) -> None:
    """A routes.cf as the original writes it (documented keys only), plus one route with rules written by hand."""
    source, plain_sink, ruled_sink = RegisteringPeripheral(0, "Old_Source"), LineSink().start(), LineSink().start()
    source.start()
    ids = {name: str(uuidlib.uuid4()) for name in ("Old_Source", "Old_Plain", "Old_Ruled")}
    ports = {"Old_Source": source.port, "Old_Plain": plain_sink.port, "Old_Ruled": ruled_sink.port}
    source.uuid = ids["Old_Source"]
    now = time.time()
    peripherals = [{"name": name, "uuid": ids[name], "config": {}, "port": ports[name], "last_seen": now, "data_port": None} for name in ids]
    routes = [{"name": "old_plain", "incoming": ids["Old_Source"], "outgoing": ids["Old_Plain"], "incoming_port": ports["Old_Source"],
               "outgoing_port": ports["Old_Plain"], "last_used": None},
              {"name": "old_ruled", "incoming": ids["Old_Source"], "outgoing": ids["Old_Ruled"], "incoming_port": ports["Old_Source"],
               "outgoing_port": ports["Old_Ruled"], "last_used": 1700000000.0, "filter": "re:^FINAL:", "transform": "sub:/^FINAL: //"}]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "routes.cf").write_text(json.dumps(routes, indent=4))
    instance = start_instance(tmp_path, config={"peripherals": peripherals})
    try:
        info = instance.command("/routes info")
        assert "Route Name: old_plain" in info and "Route Name: old_ruled" in info
        assert "Filter: re:^FINAL:" in info and "Transform: sub:/^FINAL: //" in info
        source.orch_port = instance.command_port
        source.register()  # the same uuid and name: it keeps its record and gets a data port
        source.send_on_data_port(["FINAL: one", "partial", "FINAL: two"])
        assert lines(plain_sink, 3) == ["FINAL: one", "partial", "FINAL: two"]
        assert lines(ruled_sink, 2) == ["one", "two"]
    finally:
        instance.stop()
        source.stop()
        plain_sink.stop()
        ruled_sink.stop()
