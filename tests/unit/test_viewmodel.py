"""The UI's view model: what the screen shows, tested without a terminal."""
from __future__ import annotations

import time
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.ui import viewmodel as vm

UUID_A = "11111111-1111-4111-8111-111111111111"
UUID_B = "22222222-2222-4222-8222-222222222222"
SIZES = [(80, 24), (100, 30), (40, 10), (200, 60), (39, 9), (20, 5), (1, 1), (0, 0), (80, 3)]


def peripheral(name: str, uuid: str, port: int = 6201, online: bool = True, last_seen: float | None = None) -> dict:
    return {"name": name, "uuid": uuid, "port": port, "online": online, "last_seen": last_seen if last_seen is not None else time.time()}


def route(name: str, incoming: str, outgoing: str, messages: int = 0, rate: float = 0.0, last_used: float | None = None) -> dict:
    return {"name": name, "incoming": incoming, "outgoing": outgoing, "messages": messages, "rate": rate, "last_used": last_used}


def connected_model(**overrides) -> vm.Model:
    now = time.monotonic()
    actors = {"state": vm.ActorStatus("state", now, time.time() - 65, 1, {}), "router-1": vm.ActorStatus("router-1", now, time.time() - 10, 2, {"delivered": 1234})}
    fields = dict(script_uuid="00000000-0000-4000-8000-000000000000", actors=actors, connected=True, ever_connected=True,
                  peripherals=[peripheral("LLM_Engine", UUID_A, 6201), peripheral("TTS_Engine", UUID_B, 6202, online=False)],
                  routes=[route("talk", UUID_A, UUID_B, messages=12345, rate=3.5)])
    fields.update(overrides)
    return vm.Model(**fields)


def texts(lines: list[vm.Line]) -> str:
    return "\n".join(line.text for line in lines)


def assert_fits(lines: list[vm.Line], width: int, height: int) -> None:
    assert len(lines) <= max(0, height)
    for line in lines:
        assert vm.cell_width(line.text) <= max(0, width), line.text
        assert line.text.isprintable()


# ---- text ---------------------------------------------------------------------------------
def test_fit_leaves_short_text_alone_and_pads_when_asked():
    assert vm.fit("abc", 5) == "abc"
    assert vm.fit("abc", 5, pad=True) == "abc  "


def test_fit_cuts_long_text_with_an_ellipsis_to_exactly_the_width():
    assert vm.fit("abcdefgh", 5) == "abcd…"
    assert vm.cell_width(vm.fit("x" * 1000, 37)) == 37


def test_fit_counts_wide_characters_as_two_cells():
    cut = vm.fit("日本語のテキスト", 7)
    assert vm.cell_width(cut) <= 7 and cut.endswith("…")


def test_control_characters_from_outside_never_reach_the_screen():
    assert vm.clean("evil\x1b[2Jname\ttab\nnl") == "evil?[2Jname tab nl"


@pytest.mark.parametrize("seconds,text", [(None, "never"), (0.2, "now"), (12, "12s ago"), (300, "5m ago"), (7200, "2h ago"), (200000, "2d ago")])
def test_age_is_short_and_relative(seconds, text):
    assert vm.age(seconds) == text


def test_uptime_shows_days_once_it_passes_one():
    assert vm.duration(65) == "0:01:05"
    assert vm.duration(90061) == "1d 1:01:01"


def test_rate_and_count_are_readable():
    assert vm.rate(0) == "-" and vm.rate(2.5) == "2.5/s" and vm.rate(1500) == "1,500/s"
    assert vm.count(1234567) == "1,234,567" and vm.count(None) == "-"


# ---- colours ------------------------------------------------------------------------------
def test_numbered_copies_share_their_family_colour():
    assert vm.colour_family("LLM_Engine_2") == vm.colour_family("LLM_Engine") == "llm"
    assert vm.colour_index("LLM_Engine") == vm.colour_index("LLM_Engine_17")


def test_colour_is_stable_across_runs():
    # crc32, unlike hash(), does not change with PYTHONHASHSEED: the same colour on every start.
    assert vm.colour_index("TTS_Engine") == zlib.crc32(b"tts") % vm.PALETTE_SIZE
    assert 0 <= vm.colour_index("Terminal_Input_Engine") < vm.PALETTE_SIZE


def test_peripheral_rows_carry_their_colour():
    _, rows = vm.peripheral_rows([peripheral("LLM_Engine", UUID_A)], 79, time.time())
    assert rows[0].colour == vm.colour_index("LLM_Engine")


# ---- layout --------------------------------------------------------------------------------
def test_allocate_shares_rows_fairly_and_never_gives_more_than_needed():
    assert vm.allocate(10, [2, 100, 100]) == [2, 4, 4]
    assert vm.allocate(10, [1, 1, 1]) == [1, 1, 1]
    assert vm.allocate(0, [5, 5]) == [0, 0]


def test_overview_shows_uuid_peripherals_routes_and_footer():
    frame = vm.overview(connected_model(), 100, 30)
    screen = texts(frame.lines)
    assert "00000000-0000-4000-8000-000000000000" in screen and "up 0:01:0" in screen
    assert "LLM_Engine" in screen and "6201" in screen and "online" in screen and "offline" in screen
    assert "talk" in screen and "LLM_Engine → TTS_Engine" in screen and "12,345" in screen and "3.5/s" in screen
    assert "delivered 1,234" in screen
    assert frame.lines[-1].text.startswith("m menu") and len(frame.lines) == 30


def test_offline_peripherals_are_dimmed():
    _, rows = vm.peripheral_rows([peripheral("Gone", UUID_A, online=False)], 79, time.time())
    assert rows[0].style is vm.Style.DIM


@pytest.mark.parametrize("width,height", SIZES)
def test_every_screen_fits_every_terminal_size(width, height):
    model = connected_model(activity=[vm.ActivityLine(time.time(), "gateway", "INFO", "x" * 500)])
    assert_fits(vm.overview(model, width, height).lines, width, height)
    assert_fits(vm.list_screen("Menu", ["a" * 300] * 50, 3, width, height, "hint"), width, height)
    assert_fits(vm.text_screen("Reply", "line\n" * 500 + "y" * 900, 10, width, height, "hint")[0], width, height)
    assert_fits(vm.prompt_screen("Add", "Name:", "z" * 400, width, height, "hint"), width, height)


def test_small_terminals_say_so():
    assert "terminal too small (30x8)" in texts(vm.overview(connected_model(), 30, 8).lines)


def test_long_names_are_truncated_not_wrapped():
    long_name = "Peripheral_" + "x" * 300
    frame = vm.overview(connected_model(peripherals=[peripheral(long_name, UUID_A)]), 80, 24)
    row = next(line.text for line in frame.lines if "Peripheral_" in line.text)
    assert "…" in row and "6201" in row and vm.cell_width(row) <= 80


def test_thousands_of_peripherals_scroll_and_say_where_they_are():
    many = [peripheral(f"P{i:05d}", f"{i:08d}-0000-4000-8000-000000000000") for i in range(5000)]
    model = connected_model(peripherals=many)
    top = texts(vm.overview(model, 80, 24).lines)
    assert "P00000" in top and "of 5000" in top and "P04999" not in top
    frame = vm.overview(model, 80, 24, vm.Scroll(offsets=(10**9, 0, 0)))
    assert "P04999" in texts(frame.lines)
    assert frame.scroll.offset(vm.Section.PERIPHERALS) == 5000 - frame.page_rows[vm.Section.PERIPHERALS]


def test_activity_follows_the_newest_line_and_scrolls_back():
    lines = [vm.ActivityLine(time.time(), "state", "INFO", f"event {i}") for i in range(300)]
    model = connected_model(activity=lines)
    assert "event 299" in texts(vm.overview(model, 80, 24).lines)
    older = texts(vm.overview(model, 80, 24, vm.Scroll(offsets=(0, 0, 200))).lines)
    assert "event 299" not in older and "event 99" in older


def test_warnings_in_activity_stand_out():
    model = connected_model(activity=[vm.ActivityLine(time.time(), "gateway", "WARNING", "bad line")])
    row = next(line for line in vm.overview(model, 80, 24).lines if "bad line" in line.text)
    assert row.style is vm.Style.ALERT


def test_a_silent_bus_says_the_orchestrator_is_not_reachable():
    model = connected_model(connected=False, silent_for_s=4.0)
    status = vm.overview(model, 80, 24).lines[1]
    assert "orchestrator not reachable — reconnecting" in status.text and status.style is vm.Style.ALERT


def test_before_the_first_heartbeat_it_says_connecting():
    model = vm.Model(connected=False, ever_connected=False, silent_for_s=0.5)
    assert "connecting" in vm.overview(model, 80, 24).lines[1].text


def test_focus_moves_between_sections_and_marks_the_header():
    scroll = vm.Scroll().next_focus()
    frame = vm.overview(connected_model(), 80, 24, scroll)
    focused = [line.text for line in frame.lines if line.style is vm.Style.FOCUSED_HEADER]
    assert len(focused) == 1 and "ROUTES" in focused[0]


def test_routes_to_unknown_peripherals_show_a_short_uuid_its_port_and_the_by_port_marker():
    orphan = {**route("orphan", "deadbeef-0000-4000-8000-000000000000", UUID_B), "incoming_port": 6207}
    model = connected_model(routes=[orphan])
    assert "deadbeef:6207 (by port) → TTS_Engine" in texts(vm.overview(model, 120, 30).lines)


def test_command_line_replaces_the_footer():
    frame = vm.overview(connected_model(), 80, 24, footer=vm.command_footer("/routes info", 80))
    assert frame.lines[-1].text.startswith(":/routes info_")


def test_list_screen_keeps_the_selection_visible():
    lines = vm.list_screen("Pick", [f"item {i}" for i in range(1000)], 777, 80, 24, "hint")
    selected = [line.text for line in lines if line.style is vm.Style.SELECTED]
    assert selected and "item 777" in selected[0] and "778/1000" in lines[0].text


def test_routes_with_rules_carry_a_marker_and_the_header_explains_it():
    ruled = {**route("ruled", UUID_A, UUID_B), "filter": "json:final == true"}
    text = texts(vm.overview(connected_model(routes=[route("plain", UUID_A, UUID_B), ruled]), 100, 30).lines)
    assert f"ruled{vm.RULE_MARKER} " in text and f"plain{vm.RULE_MARKER}" not in text
    assert f"({vm.RULE_MARKER} rules)" in text
    assert "rules)" not in texts(vm.overview(connected_model(), 100, 30).lines)


def test_the_rule_marker_survives_a_cut_name():
    ruled = {**route("a_very_long_route_name_" * 4, UUID_A, UUID_B), "transform": "json:pick text"}
    rows = [line.text for line in vm.overview(connected_model(routes=[ruled]), 60, 20).lines if "a_very" in line.text]
    assert rows and f"{vm.ELLIPSIS}{vm.RULE_MARKER} " in rows[0]


@pytest.mark.parametrize("width,height", SIZES)
def test_prompt_notes_fit_and_keep_the_hint_at_the_bottom(width, height):
    lines = vm.prompt_screen("Edit", "Filter:", "re:x", width, height, "hint", [f"note {i} " + "x" * 300 for i in range(50)])
    assert_fits(lines, width, height)
    if width >= vm.MIN_WIDTH and height >= vm.MIN_HEIGHT:
        assert lines[-1].text.startswith("hint") and len(lines) == height


def test_a_route_that_loses_payloads_shows_how_many_and_stands_out():
    names = {UUID_A: "Mic", UUID_B: "Speaker"}
    losing = {**route("lossy", UUID_A, UUID_B, messages=900), "dropped": 1234}
    header, rows = vm.route_rows([losing, route("fine", UUID_A, UUID_B, messages=900)], names, 100, time.time())
    assert "LOST" in header
    by_name = {row.text.split()[0]: row for row in rows}
    assert "1,234" in by_name["lossy"].text and by_name["lossy"].style == vm.Style.ALERT
    assert "1,234" not in by_name["fine"].text and by_name["fine"].style == vm.Style.NORMAL
    header, _ = vm.route_rows([route("fine", UUID_A, UUID_B, messages=900)], names, 100, time.time())
    assert "LOST" not in header  # the column appears only once a route lost something


def test_a_launched_process_shows_its_uptime():
    row = {"name": "llm", "state": "running", "pid": 4242, "restarts": 1, "uptime_s": 192.7, "last_exit": -9}
    assert vm.process_label(row) == "[running pid 4242 up 3m12s r1 exit -9]"
    assert vm.process_label({**row, "uptime_s": None, "pid": None, "state": "backoff"}) == "[backoff r1 exit -9]"
    assert [vm.short_duration(s) for s in (0, 59.9, 60, 3599, 3600 + 5 * 60, 86400 * 3 + 4 * 3600 + 59)] == [
        "0s", "59s", "1m00s", "59m59s", "1h05m", "3d04h"]


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=20), st.lists(st.integers(), max_size=3)))
def test_any_uptime_from_a_heartbeat_renders_without_raising(value):
    label = vm.process_label({"state": "running", "pid": 7, "uptime_s": value})
    is_duration = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")
    assert (" up " in label) == is_duration, (value, label)
    assert label.startswith("[running pid 7") and label.endswith("]")
