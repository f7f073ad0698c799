"""The terminal UI, end to end: the real UI process in tmux against a real running orchestrator."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from actors.ui import app as ui
from actors.ui import screens
from actors.ui import viewmodel as vm
from actors.core.protocol import Op
from actors.core.settings import HEARTBEAT_LIVENESS, IDLE_HEARTBEAT_INTERVAL_S
from tests.support.instances import REPO_ROOT, Instance, start_instance, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

TMUX_TIMEOUT_S = 5.0
SCREEN_TIMEOUT_S = 5.0
EXIT_TIMEOUT_S = 5.0
UPDATE_DEADLINE_S = 2.0  # the issue asks for < 1 s; the margin absorbs a loaded test machine
HAS_GATEWAY = (REPO_ROOT / "actors" / "gateway").is_dir()


def tmux_socket_path(name: str) -> Path:
    """Where `tmux -L name` puts its socket (tmux's own rule)."""
    return Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / name


class TmuxUi:
    """One UI process in its own tmux server (a unique socket), driven by send-keys, read by capture-pane."""

    def __init__(self, instance: Instance, tmp_path: Path, width: int = 100, height: int = 30, term: str | None = None) -> None:
        self.socket = f"orch-ui-test-{uuid.uuid4().hex[:12]}"
        self.exit_file = tmp_path / f"ui-exit-{self.socket}"
        env = f"TERM={shlex.quote(term)} " if term else ""
        command = (f"cd {shlex.quote(str(REPO_ROOT))} && {env}{shlex.quote(sys.executable)} -m actors.ui "
                   f"--runtime {shlex.quote(instance.runtime.to_json())} --name ui-test; echo $? > {shlex.quote(str(self.exit_file))}")
        self.tmux("new-session", "-d", "-x", str(width), "-y", str(height), command)

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=TMUX_TIMEOUT_S)
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for(self, text: str, timeout: float = SCREEN_TIMEOUT_S) -> str:
        return wait_until(lambda: (lambda s: s if text in s else "")(self.screen()), timeout, 0.05, f"{text!r} on screen:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)

    def exit_code(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        wait_until(self.exit_file.exists, timeout, 0.05, "the UI to exit")
        return int(wait_until(lambda: self.exit_file.read_text().strip(), timeout, 0.05, "the exit code"))

    def alive(self) -> bool:
        return not self.exit_file.exists()

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=TMUX_TIMEOUT_S)
        tmux_socket_path(self.socket).unlink(missing_ok=True)  # tmux leaves the socket file behind


@pytest.fixture
def tmux_uis() -> Iterator[list[TmuxUi]]:
    """Every TmuxUi a test opens is killed with its tmux server afterwards, whatever happened."""
    opened: list[TmuxUi] = []
    try:
        yield opened
    finally:
        for session in opened:
            session.close()


def open_ui(opened: list[TmuxUi], instance: Instance, tmp_path: Path, **kwargs) -> TmuxUi:
    session = TmuxUi(instance, tmp_path, **kwargs)
    opened.append(session)
    return session


def register(instance: Instance, name: str, port: int) -> str:
    peripheral_uuid = str(uuid.uuid4())
    instance.state_client().request(Op.REGISTER, name=name, uuid=peripheral_uuid, port=port)
    return peripheral_uuid


def populate(instance: Instance) -> None:
    register(instance, "LLM_Engine", 26201)
    register(instance, "TTS_Engine", 26202)
    instance.state_client().request(Op.ADD_ROUTE, name="talk", incoming="LLM_Engine", outgoing="TTS_Engine")


# ---- the behaviour, without a terminal -----------------------------------------------------------
def fake_interaction(model: vm.Model) -> tuple[screens.Interaction, list[str]]:
    sent: list[str] = []
    return screens.Interaction(lambda line: sent.append(line) or f"ok {line}", lambda: model), sent


def two_peripherals() -> vm.Model:
    return vm.Model(peripherals=[{"name": "A", "uuid": "a", "port": 1, "online": True}, {"name": "B", "uuid": "b", "port": 2, "online": True}],
                    routes=[{"name": "r1", "incoming": "a", "outgoing": "b"}], connected=True)


def test_menu_add_route_picks_incoming_then_outgoing_then_a_name():
    interaction, sent = fake_interaction(two_peripherals())
    for key in ["m", "2", "\n", "j", "\n"]:
        interaction.on_key(key)
    for _ in range(len("A_to_B")):
        interaction.on_key(127)
    for key in "ab\n":
        interaction.on_key(key)
    assert sent == ["/routes add ab A B"]
    assert "ok /routes add ab A B" in "\n".join(line.text for line in interaction.render(80, 24))


def test_menu_actions_send_their_commands():
    cases = {"1": [], "3": ["\n", "\n", "j", "\n", "\n"], "4": ["\n"], "5": ["j", "\n", "y"], "6": ["y"]}
    expected = {"1": "/list", "3": "/routes edit r1 B A", "4": "/routes remove r1", "5": "/remove B", "6": "/reset"}
    for item, keys in cases.items():
        interaction, sent = fake_interaction(two_peripherals())
        for key in ["m", item, *keys]:
            interaction.on_key(key)
        assert sent == [expected[item]], item


def test_launched_programs_show_their_process_and_enter_shows_the_last_log_lines():
    model = two_peripherals()
    launched = [{"name": "tts", "state": "running", "pid": 4242, "restarts": 2},
                {"name": "asr", "state": "backoff", "last_exit": 3}]
    model.actors = {"supervisor": vm.ActorStatus("supervisor", time.monotonic(), time.time(), 1, {"peripherals": launched})}
    interaction, sent = fake_interaction(model)
    for key in ["m", "7"]:
        interaction.on_key(key)
    screen = "\n".join(line.text for line in interaction.render(80, 24))
    assert "asr  [backoff exit 3]" in screen and "tts  [running pid 4242 r2]" in screen
    for key in ["j", "\n"]:
        interaction.on_key(key)
    assert sent == [":logs tts"], "Enter on a launched program asks for its last log lines"


def test_launched_programs_say_so_when_nothing_is_launched():
    interaction, sent = fake_interaction(two_peripherals())
    for key in ["m", "7"]:
        interaction.on_key(key)
    assert "No program is launched" in "\n".join(line.text for line in interaction.render(80, 24)) and sent == []


def ruled_model() -> vm.Model:
    model = two_peripherals()
    model.routes = [{"name": "r1", "incoming": "a", "outgoing": "b", "transform": "sub:/^FINAL: //"}]
    return model


def test_edit_route_sets_a_filter_typed_at_the_prompt_and_shows_the_reply():
    interaction, sent = fake_interaction(two_peripherals())
    for key in ["m", "3", "\n", "j", "\n"]:  # route r1, then "Set filter"
        interaction.on_key(key)
    prompt = texts(interaction.render(80, 24))
    assert "Filter:" in prompt and "re:<regex>" in prompt and "json:final == true" in prompt  # the forms and examples are shown
    for key in [*"json:final == true", "\n"]:
        interaction.on_key(key)
    assert sent == ["/routes set r1 filter json:final == true"]
    assert "ok /routes set r1 filter json:final == true" in texts(interaction.render(80, 24))
    interaction.on_key("x")
    assert isinstance(interaction.stack[-1], screens.MenuScreen)  # back where the action started


def test_edit_route_offers_the_current_rule_for_editing():
    interaction, sent = fake_interaction(ruled_model())
    for key in ["m", "3"]:
        interaction.on_key(key)
    assert "r1* " in texts(interaction.render(80, 24))  # the pick list marks routes with rules
    interaction.on_key("\n")
    assert "Set transform  (now: sub:/^FINAL: //)" in texts(interaction.render(100, 24))
    for key in ["j", "j", "\n", 127, *"x/", "\n"]:
        interaction.on_key(key)
    assert sent == ["/routes set r1 transform sub:/^FINAL: /x/"]


def test_edit_route_clears_rules_and_escape_at_the_prompt_sends_nothing():
    interaction, sent = fake_interaction(ruled_model())
    for key in ["m", "3", "\n", "j", "\n", *"re:x", 27]:
        interaction.on_key(key)
    assert sent == [] and "what to change" in texts(interaction.render(80, 24))
    for key in ["j", "j", "\n"]:
        interaction.on_key(key)
    assert sent == ["/routes set r1 clear"]


def texts(lines: list[vm.Line]) -> str:
    return "\n".join(line.text for line in lines)


def test_reset_needs_confirmation():
    interaction, sent = fake_interaction(two_peripherals())
    for key in ["m", "6", "n"]:
        interaction.on_key(key)
    assert sent == [] and isinstance(interaction.stack[-1], screens.MenuScreen)


def test_command_line_sends_what_was_typed():
    interaction, sent = fake_interaction(two_peripherals())
    for key in [":", *"routes info", "\n"]:
        interaction.on_key(key)
    assert sent == ["/routes info"]


def test_command_line_starts_empty_and_takes_commands_with_or_without_slash():
    for typed in ("help", "/help", "  /help "):
        interaction, sent = fake_interaction(two_peripherals())
        interaction.on_key(":")
        assert interaction.command == ""
        for key in [*typed, "\n"]:
            interaction.on_key(key)
        assert sent == ["/help"], typed


def test_command_line_sends_nothing_when_only_a_slash_was_typed():
    interaction, sent = fake_interaction(two_peripherals())
    for key in ["/", "\n"]:
        interaction.on_key(key)
    assert sent == [] and interaction.command is None


def test_keys_to_leave():
    for key, reason in (("d", screens.DETACH), ("q", screens.QUIT), ("\x03", screens.QUIT)):
        interaction, _ = fake_interaction(two_peripherals())
        interaction.on_key(key)
        assert interaction.exit == reason


# ---- end to end, in tmux ---------------------------------------------------------------------------
def test_overview_shows_registered_peripherals_and_routes(core: Instance, tmp_path: Path, tmux_uis: list[TmuxUi]):
    populate(core)
    session = open_ui(tmux_uis, core, tmp_path)
    screen = session.wait_for("LLM_Engine → TTS_Engine")
    assert "00000000-0000-4000-8000-000000000000" in screen and "TTS_Engine" in screen and "26201" in screen and "online" in screen


def test_a_route_given_a_rule_gets_its_marker_live(core: Instance, tmp_path: Path, tmux_uis: list[TmuxUi]):
    populate(core)
    session = open_ui(tmux_uis, core, tmp_path)
    session.wait_for("LLM_Engine → TTS_Engine")
    core.state_client().request(Op.SET_ROUTE_RULE, name="talk", key="filter", rule="json:final == true")
    session.wait_for(f"talk{vm.RULE_MARKER}", timeout=UPDATE_DEADLINE_S)
    core.state_client().request(Op.SET_ROUTE_RULE, name="talk", key="clear")
    wait_until(lambda: f"talk{vm.RULE_MARKER}" not in session.screen(), UPDATE_DEADLINE_S, 0.05, "the marker to go")


def test_a_newly_registered_peripheral_shows_within_a_second(core: Instance, tmp_path: Path, tmux_uis: list[TmuxUi]):
    session = open_ui(tmux_uis, core, tmp_path)
    session.wait_for("actors")
    register(core, "Late_Arrival", 26203)
    session.wait_for("Late_Arrival", timeout=UPDATE_DEADLINE_S)


def test_detach_and_quit_exit_zero_and_leave_the_system_running(core: Instance, tmp_path: Path, tmux_uis: list[TmuxUi]):
    populate(core)
    for key in ("d", "q", "C-c"):
        session = open_ui(tmux_uis, core, tmp_path)
        session.wait_for("talk")
        session.keys(key)
        assert session.exit_code() == 0, key
        assert core.state_client().request(Op.SNAPSHOT)["routes"][0]["name"] == "talk"


@pytest.mark.skipif(not HAS_GATEWAY, reason="actors/gateway.py does not exist yet: menu commands need the command port")
def test_add_route_through_the_menu_writes_routes_cf(orchestrator: Instance, tmp_path: Path, tmux_uis: list[TmuxUi]):
    register(orchestrator, "Mic_Input", 26211)
    register(orchestrator, "Speaker_Output", 26212)
    session = open_ui(tmux_uis, orchestrator, tmp_path)
    session.wait_for("Speaker_Output")
    session.keys("m")
    session.wait_for("Add Route")
    session.keys("2")
    session.wait_for("incoming")
    session.keys("Enter")  # Mic_Input (sorted first)
    session.wait_for("outgoing")
    session.keys("Down", "Enter")  # Speaker_Output
    session.wait_for("Name for")
    session.keys(*["BSpace"] * len("Mic_Input_to_Speaker_Output"))  # clear the suggested name
    session.type("voice")
    session.keys("Enter")
    session.wait_for("/routes add voice Mic_Input Speaker_Output")

    def written() -> bool:
        routes = json.loads((orchestrator.config_dir / "routes.cf").read_text()) if (orchestrator.config_dir / "routes.cf").exists() else []
        return any(r["name"] == "voice" for r in routes)
    wait_until(written, 5.0, 0.1, "route 'voice' in routes.cf")
    session.keys("Escape", "Escape")
    session.wait_for("Mic_Input → Speaker_Output")


@pytest.mark.skipif(not HAS_GATEWAY, reason="actors/gateway.py does not exist yet: the command line needs the command port")
def test_detach_leaves_the_system_serving_list_and_reattach_shows_the_same_state(orchestrator: Instance, tmp_path: Path, tmux_uis: list[TmuxUi]):
    populate(orchestrator)
    first = open_ui(tmux_uis, orchestrator, tmp_path)
    before = first.wait_for("LLM_Engine → TTS_Engine")
    first.keys("d")
    assert first.exit_code() == 0
    assert "LLM_Engine" in orchestrator.command("/list")
    second = open_ui(tmux_uis, orchestrator, tmp_path)
    after = second.wait_for("LLM_Engine → TTS_Engine")
    rows = [line for line in before.splitlines() if "Engine" in line]
    assert all(row.split()[0] in after for row in rows)
    second.keys(":")
    second.type("list")
    second.keys("Enter")
    second.wait_for("TTS_Engine")


def test_resizing_the_window_never_crashes(core: Instance, tmp_path: Path, tmux_uis: list[TmuxUi]):
    populate(core)
    session = open_ui(tmux_uis, core, tmp_path)
    session.wait_for("talk")
    for width, height in ((80, 24), (30, 8), (10, 3), (200, 60), (41, 10), (100, 30)):
        session.tmux("resize-window", "-x", str(width), "-y", str(height))
        time.sleep(0.2)
        assert session.alive(), f"UI died at {width}x{height}"
    session.tmux("resize-window", "-x", "30", "-y", "8")
    session.wait_for("terminal too small")
    session.tmux("resize-window", "-x", "80", "-y", "24")
    session.wait_for("LLM_Engine → TTS_Engine")
    session.keys("m")
    session.wait_for("Remove Peripheral")
    session.tmux("resize-window", "-x", "20", "-y", "5")
    time.sleep(0.2)
    session.keys("Escape", "q")
    assert session.exit_code() == 0


def test_works_without_colours(core: Instance, tmp_path: Path, tmux_uis: list[TmuxUi]):
    populate(core)
    session = open_ui(tmux_uis, core, tmp_path, term="vt100")
    session.wait_for("LLM_Engine")
    session.keys("q")
    assert session.exit_code() == 0


def test_says_when_the_orchestrator_is_gone_and_recovers_when_it_returns(tmp_path: Path, tmux_uis: list[TmuxUi]):
    instance = start_instance(tmp_path, only=["broker", "state"])
    try:
        session = open_ui(tmux_uis, instance, tmp_path)
        session.wait_for("actors")
        instance.stop()
        # Counted gone when the last beat's expiry passes (two idle intervals: a beat may have left just before).
        session.wait_for("orchestrator not reachable — reconnecting",
                         timeout=IDLE_HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS + SCREEN_TIMEOUT_S)
        instance = start_instance(tmp_path, only=["broker", "state"])
        session.wait_for("actors", timeout=SCREEN_TIMEOUT_S * 2)
        register(instance, "Back_Again", 26221)
        session.wait_for("Back_Again")
        assert session.alive()
    finally:
        instance.stop()


def test_without_a_terminal_no_ui_starts(core: Instance):
    done = subprocess.run([sys.executable, "-m", "actors.ui", "--runtime", core.runtime.to_json(), "--name", "ui-notty"], cwd=REPO_ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    assert done.returncode == ui.EXIT_NO_TERMINAL  # run_actor passes the actor's own exit code on


def test_a_ui_attaching_later_shows_the_activity_from_before(core: Instance) -> None:
    from actors.core.protocol import Op
    from actors.ui.busview import BusView

    core.state_client().request(Op.REGISTER, name="Early_Bird", uuid="12345678-1234-4234-8234-000000000042", port=1)
    wait_until(lambda: any("Early_Bird" in e["text"] for e in core.control(Op.CONTROL_ACTIVITY)["activity"]), 5,
               message="the supervisor to keep the activity line")
    view = BusView(core.runtime, core.context, "ui-test")
    try:
        def attached() -> bool:
            view.drain()
            view.maybe_snapshot()
            return view.snapshots > 0
        wait_until(attached, 10, message="a snapshot")
        assert any("Early_Bird" in line.text for line in view.activity)
    finally:
        view.close()
