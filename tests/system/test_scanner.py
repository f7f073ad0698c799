"""The scanner: /info parsing, bounded sweeps, liveness, own ports; and discovery end to end with real processes.

Every port probed here is one this test opened itself (fakes on ephemeral ports), or the
instance's own ports, which the scanner must skip.
"""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import zmq

from actors.core.protocol import Op
from actors.core.runner import StopFlag
from actors.scanner.probe import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S, BadAnswer, Outcome, Target, parse_info, slow_first, sweep
from actors.scanner.scanner import Liveness, ScanPlan, Scanner
from actors.core.settings import Endpoints, Runtime, default_config
from tests.support.instances import Instance, wait_until
from tests.support.fakes import FakeListener, InfoPeripheral, closing_port, garbage_port, silent_port, streaming_port
from tests.support.scanning import peripherals, ports_spec, scanner_stats, start, target, wait_sweeps

UUID_A = "11111111-2222-3333-4444-555555555555"
UUID_B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
OWN_UUID = "00000000-0000-4000-8000-000000000000"  # the script_uuid tests/support/instances.py writes
PROBE_BOUND_S = CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S
SLACK_S = 1.0
DISCOVERY_TIMEOUT_S = 10.0


def targets(*fakes: FakeListener) -> list[Target]:
    return [target(fake) for fake in fakes]


# ---- the /info answer ---------------------------------------------------------------------------
def test_parse_info_reads_name_uuid_and_config_lines() -> None:
    answer = parse_info(f"LLM_Engine\n{UUID_A}\nmodel=small\ndelivery=stream\nEOF\n".encode())
    assert (answer.name, answer.uuid, answer.config) == ("LLM_Engine", UUID_A, {"model": "small", "delivery": "stream"})


def test_parse_info_tolerates_crlf() -> None:
    answer = parse_info(f"TTS_Engine\r\n{UUID_A}\r\nvoice=low\r\nEOF\r\n".encode())
    assert (answer.name, answer.uuid, answer.config) == ("TTS_Engine", UUID_A, {"voice": "low"})


def test_parse_info_accepts_name_uuid_and_eof_without_config_lines() -> None:
    assert parse_info(f"Terminal_Input_Engine\n{UUID_A}\nEOF\n".encode()).uuid == UUID_A
    assert parse_info(f"Terminal_Input_Engine\n{UUID_A}\nmode=text".encode()).config == {"mode": "text"}


def test_parse_info_refuses_a_two_line_answer() -> None:
    for answer in (f"Terminal_Input_Engine\n{UUID_A}\n", f"Terminal_Input_Engine\n{UUID_A}"):
        with pytest.raises(BadAnswer, match="third line"):
            parse_info(answer.encode())


def test_parse_info_ignores_what_follows_eof_and_lines_without_equals() -> None:
    answer = parse_info(f"Tool\n{UUID_A}\njust a remark\nk=v=w\nEOF\nlater=ignored\n".encode())
    assert answer.config == {"k": "v=w"}


@pytest.mark.parametrize("data", [
    b"",
    b"only_a_name\nEOF\n",
    b"Name\nnot-a-uuid\nEOF\n",
    f"Name\n{UUID_A[:-1]}\nEOF\n".encode(),
    f"two words\n{UUID_A}\nEOF\n".encode(),
    b"\x00\xff\xfe binary\n\x80\x81\n",
    b"Unknown command. Type '/help' for available commands.\n",
], ids=["empty", "one-line", "bad-uuid", "short-uuid", "name-with-space", "binary", "an-orchestrator"])
def test_parse_info_rejects_garbage(data: bytes) -> None:
    with pytest.raises(BadAnswer):
        parse_info(data)


# ---- sweeps against fakes -----------------------------------------------------------------------
def test_sweep_finds_every_fake_peripheral_in_one_sweep(fakes: list[FakeListener]) -> None:
    peripherals = [start(fakes, InfoPeripheral(f"Fake_{i}", config={"n": str(i)})) for i in range(5)]
    crlf = start(fakes, InfoPeripheral("Crlf_Engine", newline=b"\r\n", shut_write=True))
    no_eof = start(fakes, InfoPeripheral("Closes_Early", config={"voice": "low"}, eof=False, shut_write=True))
    results = asyncio.run(sweep(targets(*peripherals, crlf, no_eof)))
    found = {r.answer.uuid: r.target.port for r in results if r.outcome is Outcome.FOUND and r.answer}
    assert found == {fake.uuid: fake.port for fake in [*peripherals, crlf, no_eof]}


@pytest.mark.parametrize("make, outcome", [(silent_port, Outcome.SILENT), (garbage_port, Outcome.GARBAGE),
                                           (streaming_port, Outcome.GARBAGE), (closing_port, Outcome.EMPTY)],
                         ids=["silent", "garbage", "streams-forever", "closes-at-once"])
def test_a_misbehaving_port_registers_nothing_and_costs_a_bounded_time(fakes: list[FakeListener], make: Any, outcome: Outcome) -> None:
    bad = start(fakes, make())
    good = start(fakes, InfoPeripheral("Good_Engine"))
    began = time.monotonic()
    results = {r.target.port: r for r in asyncio.run(sweep(targets(bad, good)))}
    assert time.monotonic() - began < PROBE_BOUND_S + SLACK_S
    assert results[bad.port].outcome is outcome and results[bad.port].answer is None
    assert results[good.port].outcome is Outcome.FOUND


def test_silent_ports_do_not_add_up(fakes: list[FakeListener]) -> None:
    silent = [start(fakes, silent_port()) for _ in range(20)]
    good = start(fakes, InfoPeripheral("Good_Engine"))
    began = time.monotonic()
    results = asyncio.run(sweep(targets(*silent, good)))
    assert time.monotonic() - began < PROBE_BOUND_S + SLACK_S  # sequentially this would be 20 answer timeouts
    assert [r.outcome for r in results].count(Outcome.FOUND) == 1


def test_a_port_nobody_listens_on_is_closed(fakes: list[FakeListener]) -> None:
    gone = start(fakes, InfoPeripheral("Gone"))
    gone.stop()
    assert [r.outcome for r in asyncio.run(sweep(targets(gone)))] == [Outcome.CLOSED]


def test_ports_that_accepted_last_time_are_probed_first() -> None:
    plain = [Target("h", "127.0.0.1", socket.AF_INET, port) for port in (1, 2, 3, 4)]
    assert [t.port for t in slow_first(plain, {("h", 3)})] == [3, 1, 2, 4]


# ---- liveness -----------------------------------------------------------------------------------
def record(uuid: str, port: int, online: bool = True, host: str = "localhost") -> dict[str, Any]:
    return {"uuid": uuid, "name": uuid[:4], "port": port, "host": host, "online": online}


def test_liveness_reports_lost_after_the_configured_number_of_missed_sweeps() -> None:
    live = Liveness()
    peripherals = {UUID_A: record(UUID_A, 7000)}
    scanned = {("localhost", 7000)}
    assert live.after_sweep(peripherals, set(), scanned, 3) == []
    assert live.after_sweep(peripherals, set(), scanned, 3) == []
    assert live.after_sweep(peripherals, set(), scanned, 3) == [UUID_A]


def test_liveness_resets_when_seen_and_never_repeats_for_an_offline_peripheral() -> None:
    live = Liveness()
    scanned = {("localhost", 7000)}
    live.after_sweep({UUID_A: record(UUID_A, 7000)}, set(), scanned, 2)
    live.after_sweep({UUID_A: record(UUID_A, 7000)}, {UUID_A}, scanned, 2)
    assert live.after_sweep({UUID_A: record(UUID_A, 7000)}, set(), scanned, 2) == []
    assert live.after_sweep({UUID_A: record(UUID_A, 7000, online=False)}, set(), scanned, 2) == []


def test_liveness_leaves_peripherals_outside_the_scanned_ports_alone() -> None:
    live = Liveness()
    peripherals = {UUID_A: record(UUID_A, 9999), UUID_B: record(UUID_B, 7000, host="other-board")}
    for _ in range(5):
        assert live.after_sweep(peripherals, set(), {("localhost", 7000)}, 1) == []


# ---- own ports ----------------------------------------------------------------------------------
def plan_for(**overrides: Any) -> ScanPlan:
    config = {**default_config(), **overrides}
    return ScanPlan.from_config(config)


def test_own_command_data_and_tcp_bus_ports_are_never_targets(tmp_path: Path) -> None:
    endpoints = Endpoints(events_in="tcp://127.0.0.1:7101", events_out="tcp://*:7102", state_front="ipc:///tmp/x.ipc",
                          state_back="tcp://192.0.2.1:7103", data="tcp://localhost:7104", control="ipc:///tmp/y.ipc")
    runtime = Runtime(config_dir=tmp_path, run_dir=tmp_path, endpoints=endpoints)
    context = zmq.Context()
    try:
        scanner = Scanner(runtime, context, StopFlag(), "scanner")
        plan = plan_for(known_ports="7000-7110", command_port=7000, data_port_range="7001-7050", known_hosts=["127.0.0.1"])
        found, aliases = asyncio.run(scanner._targets(plan))
    finally:
        context.destroy(linger=0)
    ports = {target.port for target in found}
    # 7103 belongs to a bus on another host: on this host it is an ordinary port.
    assert ports == set(range(7051, 7101)) | {7103} | set(range(7105, 7111))
    assert "localhost" in aliases["127.0.0.1"]


# ---- real processes -----------------------------------------------------------------------------
def test_discovery_end_to_end_ignores_misbehaving_ports(fakes: list[FakeListener],
                                                        scanning: Callable[..., Instance]) -> None:
    good = [start(fakes, InfoPeripheral(f"Engine_{i}", config={"delivery": "stream"} if i == 0 else {})) for i in range(3)]
    bad = [start(fakes, make()) for make in (silent_port, garbage_port, streaming_port, closing_port)]
    instance = scanning(ports_spec(*good, *bad))
    known = wait_until(lambda: len(peripherals(instance)) >= 3 and peripherals(instance), DISCOVERY_TIMEOUT_S, 0.1,
                       "discovery")
    assert {uuid: (p["port"], p["online"]) for uuid, p in known.items()} == {f.uuid: (f.port, True) for f in good}
    assert known[good[0].uuid]["delivery"] == "stream"
    wait_sweeps(instance, 2)
    stats = scanner_stats(instance)
    assert len(peripherals(instance)) == 3
    assert stats["found"] == 3 and stats["garbage"] == 2 and stats["ports_scanned"] == 7
    assert stats["sweep_seconds"] < PROBE_BOUND_S + SLACK_S and stats["last_scan"] > time.time() - DISCOVERY_TIMEOUT_S
    log = (instance.config_dir / "logs" / "scanner.log").read_text()
    assert log.count(f":{bad[1].port} answered /info with garbage") == 1  # once per port, not per sweep


def test_a_peripheral_goes_offline_and_comes_back(fakes: list[FakeListener],
                                                  scanning: Callable[..., Instance]) -> None:
    fake = start(fakes, InfoPeripheral("Flaky_Engine"))
    instance = scanning(ports_spec(fake))
    wait_until(lambda: peripherals(instance).get(fake.uuid, {}).get("online"), DISCOVERY_TIMEOUT_S, 0.1, "discovery")
    fake.stop()
    offline = wait_until(lambda: (p := peripherals(instance)[fake.uuid]) and not p["online"] and p, DISCOVERY_TIMEOUT_S,
                         0.1, "offline")
    assert offline["name"] == "Flaky_Engine"  # marked offline, not deleted
    fake.start()  # same port again
    wait_until(lambda: peripherals(instance)[fake.uuid]["online"], DISCOVERY_TIMEOUT_S, 0.1, "back online")


def test_own_ports_and_own_uuid_are_never_reported(fakes: list[FakeListener],
                                                   scanning: Callable[..., Instance]) -> None:
    on_command_port = start(fakes, InfoPeripheral("On_Command_Port"))
    on_data_port = start(fakes, InfoPeripheral("On_Data_Port"))
    mirror = start(fakes, InfoPeripheral("Orchestrator_Itself", uuid=OWN_UUID))
    real = start(fakes, InfoPeripheral("Real_Engine"))
    instance = scanning(ports_spec(on_command_port, on_data_port, mirror, real), command_port=on_command_port.port,
                              data_port_range=f"{on_data_port.port}-{on_data_port.port}")
    wait_until(lambda: real.uuid in peripherals(instance), DISCOVERY_TIMEOUT_S, 0.1, "discovery")
    wait_sweeps(instance, 2)
    assert set(peripherals(instance)) == {real.uuid}
    assert on_command_port.info_requests == 0 and on_data_port.info_requests == 0  # not even probed
    assert scanner_stats(instance)["ports_scanned"] == 2


def test_changed_known_ports_apply_at_the_next_sweep(fakes: list[FakeListener],
                                                     scanning: Callable[..., Instance]) -> None:
    first = start(fakes, InfoPeripheral("First_Engine"))
    later = start(fakes, InfoPeripheral("Later_Engine"))
    instance = scanning(ports_spec(first))
    wait_until(lambda: first.uuid in peripherals(instance), DISCOVERY_TIMEOUT_S, 0.1, "first discovery")
    assert later.info_requests == 0
    instance.state_client().request(Op.SET_CONFIG, values={"known_ports": ports_spec(first, later)})
    wait_until(lambda: later.uuid in peripherals(instance), DISCOVERY_TIMEOUT_S, 0.1, "discovery after the change")


def test_discovery_under_the_full_system_shows_in_list(fakes: list[FakeListener],
                                                       scanning: Callable[..., Instance]) -> None:
    fake = start(fakes, InfoPeripheral("Listed_Engine"))
    instance = scanning(ports_spec(fake), full=True)
    listing = wait_until(lambda: "Listed_Engine" in (text := instance.command("/list")) and text, DISCOVERY_TIMEOUT_S,
                         0.2, "the peripheral in /list")
    line = next(line for line in listing.splitlines() if "Listed_Engine" in line)
    assert fake.uuid in line and str(fake.port) in line and "online" in line
