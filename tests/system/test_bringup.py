"""Robot bring-up: the supervisor starts, restarts, stops and joins the peripherals of peripherals.toml.

Every test runs the real orchestrator (launch.py --headless) on loopback with fake peripheral
programs (tests/support/fake_peripheral.py) that speak only the legacy protocol.
"""
from __future__ import annotations

import json
import shutil
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from actors.core.protocol import Op
from actors.supervisor.peripherals import BEAT_ERROR_CHARS
from tests.support.instances import (REPO_ROOT, SUPPORT_DIR, Instance, free_port_range, send_line, start_instance,
                                     wait_until, write_test_config)

FAKE = SUPPORT_DIR / "fake_peripheral.py"
WAIT_S = 15.0
SYNC_WAIT_S = 0.5  # a line echoed before `logs -f` opened the file is not printed: sent again after this
BUS_PORTS = 6  # --bus tcp://HOST:PORT takes six consecutive ports


def entry(key: str, *args: str, **settings: Any) -> str:
    """One [peripherals.<key>] table running the fake with args (it registers under the key unless --name says otherwise)."""
    if "--name" not in args:
        args = ("--name", key, *args)
    lines = [f"[peripherals.{key}]", f"command = {json.dumps([sys.executable, str(FAKE), *args])}"]
    lines += [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def pid_lines(path: Path) -> list[tuple[str, int, float]]:
    """The fake's pid file: (role, pid, start time) per line."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        role, pid, stamp = line.split()
        rows.append((role, int(pid), float(stamp)))
    return rows


def alive(pid: int) -> bool:
    """A live process (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] not in (b"Z", b"X")


def watchdogs_of(parent: int) -> list[int]:
    """Live group watchdogs started by this supervisor."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            command = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rfind(b")") + 2:].split()[1]) == parent and b"actors.supervisor.groupwatch" in command and alive(int(name)):
            found.append(int(name))
    return found


def kill_quietly(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Robot:
    """An orchestrator started with a launch file; every pid a fake wrote is killed at the end, whatever happened."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.config_dir = tmp_path / "config"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.instance: Instance | None = None

    def pid_file(self, key: str) -> Path:
        return self.tmp_path / f"{key}.pids"

    def write(self, text: str) -> None:
        temporary = self.config_dir / "peripherals.toml.tmp"
        temporary.write_text(text)
        os.replace(temporary, self.config_dir / "peripherals.toml")

    def start(self, text: str) -> Instance:
        self.write(text)
        self.instance = start_instance(self.tmp_path, only=["broker", "state", "gateway", "router"])
        return self.instance

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in self.instance.status()["peripherals"]}

    def row(self, key: str) -> dict[str, Any]:
        return self.rows()[key]

    def control(self, action: str, name: str | None = None, **args: Any) -> Any:
        return self.instance.control(Op.CONTROL_PERIPHERAL, action=action, name=name, **args)

    def wait_state(self, key: str, state: str, registered: bool | None = None, timeout: float = WAIT_S) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            row = self.rows().get(key)
            if row and row["state"] == state and (registered is None or row["registered"] == registered):
                return row
            return None
        return wait_until(check, timeout, 0.05, f"{key} {state} registered={registered}")

    def log_text(self, key: str) -> str:
        path = self.config_dir / "logs" / "peripherals" / f"{key}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_pids(self) -> list[int]:
        return [pid for path in self.tmp_path.glob("*.pids") for _, pid, _ in pid_lines(path)]

    def close(self) -> None:
        if self.instance is not None and self.instance.process.poll() is None:
            self.instance.stop()
        elif self.instance is not None:  # the supervisor is gone (a test killed it): its actors follow it by themselves
            self.instance.context.destroy(linger=0)
        kill_quietly(self.all_pids())


@pytest.fixture
def robot(tmp_path: Path) -> Iterator[Robot]:
    bot = Robot(tmp_path)
    try:
        yield bot
    finally:
        bot.close()


def test_start_order_join_and_bad_entry(robot: Robot) -> None:
    """`after` waits for registration; a bad entry is reported by key and skipped; status joins process and protocol state."""
    text = (entry("tts", "--name", "TTS_Engine", "--register-delay", "1.0", "--pid-file", str(robot.pid_file("tts")))
            + entry("llm", "--name", "LLM_Engine", "--pid-file", str(robot.pid_file("llm")), after=["tts"], name="LLM_Engine")
            + entry("lonely", "--no-register", "--pid-file", str(robot.pid_file("lonely")), start_timeout=0.5)
            + entry("patient", "--name", "patient", "--pid-file", str(robot.pid_file("patient")), after=["lonely"], start_timeout=1.0)
            + "[peripherals.broken]\ncommand = \"x\"\nrestart = \"sometimes\"\n")
    robot.start(text.replace('[peripherals.tts]', '[peripherals.tts]\nname = "TTS_Engine"'))
    llm = robot.wait_state("llm", "running", registered=True)
    tts = robot.row("tts")
    assert tts["registered"] and tts["peripheral"] == "TTS_Engine" and tts["uuid"]
    assert llm["peripheral"] == "LLM_Engine" and llm["pid"] and llm["restarts"] == 0 and llm["last_exit"] is None
    records = {p["name"]: p for p in robot.instance.state_client().request(Op.SNAPSHOT)["peripherals"]}
    llm_started = pid_lines(robot.pid_file("llm"))[0][2]
    assert llm_started >= records["TTS_Engine"]["last_seen"], "llm started before tts registered"
    status = robot.instance.status()
    assert "broken" not in robot.rows()
    assert any("peripherals.broken" in p and "restart" in p for p in status["launch_problems"])
    lonely = robot.wait_state("lonely", "running")
    wait_until(lambda: robot.row("lonely")["not_registered"], WAIT_S, 0.05, "lonely flagged as never registered")
    assert not lonely["registered"]
    assert any("lonely" in reason and "not registered" in reason for reason in robot.instance.status()["reasons"])
    patient = robot.wait_state("patient", "running", registered=True)  # started after start_timeout without lonely
    assert patient["pid"]


def test_restart_backoff_flapping_limit_and_start_by_hand(robot: Robot) -> None:
    """A crashing peripheral is restarted with growing delays, then left failed at flap_limit; a hand start revives it."""
    pids = robot.pid_file("crashy")
    robot.start(entry("crashy", "--crash-after", "0.05", "--pid-file", str(pids), backoff=0.2, flap_limit=4, flap_window=60))
    row = robot.wait_state("crashy", "failed", timeout=WAIT_S)
    assert row["restarts"] == 3 and row["last_exit"] == 3 and row["pid"] is None
    starts = [stamp for _, _, stamp in pid_lines(pids)]
    assert len(starts) == 4
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps  # 0.2 doubling, plus the time it ran
    assert any("crashy failed" in reason for reason in robot.instance.status()["reasons"])
    time.sleep(0.5)
    assert len(pid_lines(pids)) == 4, "a failed peripheral was started again by itself"
    assert robot.control("start", "crashy")["done"] == ["crashy: started"]
    wait_until(lambda: len(pid_lines(pids)) == 5, WAIT_S, 0.05, "the hand start")
    assert "exited with code 3" in robot.log_text("crashy")


def test_stop_kills_the_whole_group_after_stop_timeout(robot: Robot) -> None:
    """SIGTERM to the group, SIGKILL after stop_timeout: a leader and a forked child that both ignore SIGTERM are gone."""
    pids = robot.pid_file("stubborn")
    robot.start(entry("stubborn", "--ignore-term", "--fork-child", "--pid-file", str(pids), stop_timeout=0.7))
    robot.wait_state("stubborn", "running", registered=True)
    wait_until(lambda: len(pid_lines(pids)) == 2, WAIT_S, 0.05, "leader and child pids")
    members = [pid for _, pid, _ in pid_lines(pids)]
    began = time.monotonic()
    assert robot.control("stop", "stubborn")["done"] == ["stubborn: stopping"]
    wait_until(lambda: not any(alive(pid) for pid in members), WAIT_S, 0.02, "the group to be gone")
    assert time.monotonic() - began >= 0.6, "killed before stop_timeout"
    row = robot.wait_state("stubborn", "stopped")
    assert row["last_exit"] == -signal.SIGKILL
    time.sleep(0.5)
    assert robot.row("stubborn")["state"] == "stopped", "a stopped peripheral was restarted"


def test_no_orphans_after_supervisor_sigkill(robot: Robot) -> None:
    """The supervisor dies by SIGKILL: the watchdog ends every peripheral group, forked children and SIGTERM-ignorers too."""
    robot.start(entry("plain", "--pid-file", str(robot.pid_file("plain")))
                + entry("forker", "--fork-child", "--ignore-term", "--pid-file", str(robot.pid_file("forker"))))
    robot.wait_state("plain", "running", registered=True)
    robot.wait_state("forker", "running", registered=True)
    wait_until(lambda: len(robot.all_pids()) == 3, WAIT_S, 0.05, "three peripheral processes")
    pids = robot.all_pids()
    assert all(alive(pid) for pid in pids)
    first = wait_until(lambda: watchdogs_of(robot.instance.process.pid), WAIT_S, 0.05, "the watchdog")
    os.kill(first[0], signal.SIGKILL)  # a killed watchdog is replaced and told every group again
    wait_until(lambda: (w := watchdogs_of(robot.instance.process.pid)) and w != first, WAIT_S, 0.05, "a new watchdog")
    robot.instance.process.send_signal(signal.SIGKILL)
    robot.instance.process.wait(timeout=5)
    wait_until(lambda: not any(alive(pid) for pid in pids), WAIT_S, 0.05, "every peripheral process to be gone")


def test_clean_stop_leaves_nothing(robot: Robot) -> None:
    """`launch.py stop` (SIGTERM to the supervisor) stops peripherals with their children before it exits."""
    robot.start(entry("forker", "--fork-child", "--pid-file", str(robot.pid_file("forker")), stop_timeout=0.5))
    robot.wait_state("forker", "running", registered=True)
    wait_until(lambda: len(robot.all_pids()) == 2, WAIT_S, 0.05, "leader and child")
    pids = robot.all_pids()
    robot.instance.process.send_signal(signal.SIGTERM)
    robot.instance.process.wait(timeout=15)
    assert not any(alive(pid) for pid in pids)


def test_stdin_lines_and_log_rotation(robot: Robot) -> None:
    """Lines sent reach the peripheral's stdin; its output lands in a log that rotates at log_max_bytes."""
    robot.start(entry("input", "--echo-stdin", "--spew", "40000", stdin=True, log_max_bytes=8192, log_backups=2)
                + entry("deaf", "--pid-file", str(robot.pid_file("deaf"))))
    robot.wait_state("input", "running", registered=True)
    assert robot.control("send", "input", text="hello robot  with spaces")["sent"]
    wait_until(lambda: "got: hello robot  with spaces" in robot.log_text("input"), WAIT_S, 0.05, "the echoed line")
    folder = robot.config_dir / "logs" / "peripherals"
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("input.log"))
    assert names == ["input.log", "input.log.1", "input.log.2"]
    assert all((folder / name).stat().st_size <= 8192 for name in names)
    tail = robot.control("tail", "input")["lines"]
    assert tail[-1] == "got: hello robot  with spaces"
    robot.wait_state("deaf", "running")
    for bad in ({"name": "deaf", "text": "x"}, {"name": "input", "text": "two\nlines"}, {"name": "ghost", "text": "x"}):
        with pytest.raises(Exception) as caught:
            robot.control("send", **bad)
        assert "Unavailable" not in type(caught.value).__name__


def test_launch_file_edit_while_running(robot: Robot) -> None:
    """Added starts, removed stops, changed command restarts; the unchanged one keeps its process."""
    keep, change, drop = (entry(k, "--pid-file", str(robot.pid_file(k))) for k in ("keep", "change", "drop"))
    robot.start(keep + change + drop)
    before = {k: robot.wait_state(k, "running", registered=True)["pid"] for k in ("keep", "change", "drop")}
    changed = entry("change", "--pid-file", str(robot.pid_file("change")), "--name", "Changed_Engine")
    added = entry("added", "--pid-file", str(robot.pid_file("added")))
    robot.write(keep + changed + added)
    robot.wait_state("added", "running", registered=True)
    row = wait_until(lambda: (r := robot.rows().get("change")) and r["pid"] not in (None, before["change"]) and r, WAIT_S, 0.05,
                     "change restarted")
    assert "Changed_Engine" in row["command"]
    wait_until(lambda: "drop" not in robot.rows(), WAIT_S, 0.05, "drop removed")
    assert not alive(before["drop"]) and not alive(before["change"])
    assert robot.row("keep")["pid"] == before["keep"] and alive(before["keep"]) and robot.row("keep")["restarts"] == 0
    robot.write(keep + changed + added + "[peripherals.bad\n")  # not TOML: everything keeps running as it is
    time.sleep(1.5)
    assert {k: r["pid"] for k, r in robot.rows().items() if k != "change"} == {"keep": before["keep"], "added": robot.row("added")["pid"]}
    assert any("not valid TOML" in p for p in robot.instance.status()["launch_problems"])


def run_launch(robot: Robot, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), "--config-dir", str(robot.config_dir), *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)


def test_cli_command_port_status_and_ui_commands(robot: Robot) -> None:
    """`launch.py peripheral/logs/status`, `/launch` (admin only) and `/status` on the command port, the UI's :send and :logs."""
    from actors.supervisor.peripheralcli import ui_local_command
    from actors.ui import viewmodel as vm

    robot.start(entry("input", "--echo-stdin", stdin=True) + entry("tts", "--name", "TTS_Engine", name="TTS_Engine"))
    robot.wait_state("input", "running", registered=True)
    robot.wait_state("tts", "running", registered=True)
    listed = run_launch(robot, "peripheral", "list")
    assert listed.returncode == 0 and "input" in listed.stdout and "registered as TTS_Engine" in listed.stdout, listed
    status = run_launch(robot, "status")
    assert "peripherals (peripherals.toml):" in status.stdout and "registered as input" in status.stdout, status.stdout
    first_uuid = robot.row("tts")["uuid"]
    stopped = run_launch(robot, "peripheral", "stop", "tts")
    assert stopped.returncode == 0 and "tts: stopping" in stopped.stdout
    robot.wait_state("tts", "stopped")
    unknown = run_launch(robot, "peripheral", "restart", "ghost")
    assert unknown.returncode == 2 and "no launched peripheral 'ghost'" in unknown.stderr
    reply = robot.instance.command("/launch start tts")
    assert reply.strip() == "tts: started"
    again = robot.wait_state("tts", "running", registered=True)
    # a fresh uuid while the old record still holds the name: it registered as TTS_Engine_1, and is joined by that suffix
    assert again["uuid"] != first_uuid and again["peripheral"] == "TTS_Engine_1", again
    listing = robot.instance.command("/launch list")
    assert listing.startswith("Launched peripherals:") and "tts" in listing and "restarts 1" in listing
    assert robot.instance.command("/launch dance").startswith("Usage: /launch")
    through_ctl = run_launch(robot, "ctl", "/launch list")
    assert through_ctl.returncode == 0 and "registered as TTS_Engine" in through_ctl.stdout, through_ctl
    tts_pid = robot.row("tts")["pid"]

    def launched_now() -> list[dict[str, Any]] | None:  # /status carries the supervisor's latest heartbeat: up to 1 s old
        rows = json.loads(robot.instance.command("/status")).get("Launched", [])
        return rows if any(r.get("name") == "tts" and r.get("registered") and r.get("pid") == tts_pid for r in rows) else None
    launched = wait_until(launched_now, WAIT_S, 0.2, "/status Launched with the restarted tts")

    control = lambda **args: robot.control(**args)  # noqa: E731 - the UI's control request, over the real socket
    gateway_lines: list[str] = []
    assert ui_local_command("/send input hi there", control) == "Sent to input: hi there"
    wait_until(lambda: "got: hi there" in robot.log_text("input"), WAIT_S, 0.05, "the UI's line")
    assert "got: hi there" in ui_local_command("/logs input", control)
    assert ui_local_command("/send tts hello", control).startswith("Error: tts has no stdin")
    assert ui_local_command("/send input", control).startswith("Usage")
    assert ui_local_command("/list", control) is None and not gateway_lines
    logs = run_launch(robot, "logs", "input", "-n", "1")
    assert logs.returncode == 0 and logs.stdout.strip() == "got: hi there"
    assert run_launch(robot, "logs", "../orch").returncode == 2

    beat = {"peripherals": launched}
    model = vm.Model(peripherals=[{"name": "input", "online": True, "port": 1}], actors={
        "supervisor": vm.ActorStatus("supervisor", time.monotonic(), time.time(), 1, beat, "h")})
    _, rows = vm.peripheral_rows(model.peripherals, 120, time.time(), vm.launched_rows(model))
    texts = [row.text for row in rows]
    assert any(t.startswith("input [running pid") for t in texts) and any(t.startswith("tts [running") for t in texts), texts


def test_launch_command_refused_to_non_admin(tmp_path: Path) -> None:
    """/launch stops robot programs: from a client outside admin_clients it is refused and nothing stops."""
    import socket as socketlib
    robot = Robot(tmp_path)
    robot.write(entry("tts"))
    try:
        robot.instance = start_instance(tmp_path, only=["broker", "state", "gateway", "router"],
                                        config={"admin_clients": ["127.0.0.1"], "allowed_clients": ["127.0.0.0/8"]})
        robot.wait_state("tts", "running", registered=True)
        with socketlib.socket() as sock:
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(5)
            sock.connect(("127.0.0.1", robot.instance.command_port))
            sock.sendall(b"/launch stop tts\n")
            sock.shutdown(socketlib.SHUT_WR)
            answer = sock.recv(4096).decode()
        assert "not allowed" in answer
        time.sleep(0.5)
        assert robot.row("tts")["state"] == "running"
    finally:
        robot.close()


def test_pty_stdin_and_logs_follow(robot: Robot) -> None:
    """stdin = "pty": the peripheral sees a terminal and gets the lines sent; `launch.py logs -f` prints them as they come."""
    robot.start(entry("term", "--echo-stdin", stdin="pty"))
    robot.wait_state("term", "running", registered=True)
    follower = subprocess.Popen([sys.executable, str(REPO_ROOT / "launch.py"), "--config-dir", str(robot.config_dir), "logs", "term", "-f",
                                 "-n", "0"], stdout=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        time.sleep(0.5)  # the follower has printed the (empty) tail and waits for more
        robot.control("send", "term", text="over the pty")
        wait_until(lambda: "got: over the pty" in robot.log_text("term"), WAIT_S, 0.05, "the echoed line")
        seen = b""
        deadline = time.monotonic() + WAIT_S
        while b"got: over the pty" not in seen and time.monotonic() < deadline:
            if select.select([follower.stdout], [], [], 0.1)[0]:
                seen += os.read(follower.stdout.fileno(), 65536)
        assert b"got: over the pty" in seen, seen
    finally:
        follower.kill()
        follower.wait(timeout=5)


def test_a_resent_request_is_not_done_twice(robot: Robot) -> None:
    """A client that resends (same req_id, as RequestClient does after 0.5 s without an answer) gets the first reply: one line, not two."""
    from actors.core.protocol import Reply, Request, decode_as, encode
    import zmq

    robot.start(entry("input", "--echo-stdin", stdin=True))
    robot.wait_state("input", "running", registered=True)
    sock = robot.instance.context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(robot.instance.runtime.endpoints.control)
    try:
        request = encode(Request(op=Op.CONTROL_PERIPHERAL.value, args={"action": "send", "name": "input", "text": "once"}, req_id="r-1"))
        for _ in range(3):
            sock.send_multipart([b"", request])
        replies = []
        for _ in range(3):
            assert sock.poll(5000), "no reply"
            replies.append(decode_as(sock.recv_multipart()[-1], Reply))
        assert all(reply.ok and reply.result == {"sent": "input: once"} for reply in replies)
    finally:
        sock.close()
    wait_until(lambda: "got: once" in robot.log_text("input"), WAIT_S, 0.05, "the line")
    time.sleep(0.5)
    assert robot.log_text("input").count("got: once") == 1


def test_restart_policies_and_a_missing_program(robot: Robot) -> None:
    """on-failure leaves a clean exit stopped, never leaves a crash stopped, always restarts a clean exit; a missing
    program backs off, and why it cannot start reaches /status's Launched too (shortened)."""
    program = "/nonexistent/robot-program" + "-with-a-long-name" * 20
    robot.start(entry("clean", "--crash-after", "0.05", "--exit-code", "0")
                + entry("never", "--crash-after", "0.05", restart="never")
                + entry("always", "--crash-after", "0.05", "--exit-code", "0", restart="always", backoff=0.05, flap_limit=3)
                + f'[peripherals.missing]\ncommand = ["{program}"]\nbackoff = 0.05\nflap_limit = 2\n')
    assert robot.wait_state("clean", "stopped")["last_exit"] == 0
    never = robot.wait_state("never", "stopped")
    assert never["last_exit"] == 3 and never["restarts"] == 0
    assert robot.wait_state("always", "failed")["restarts"] == 2
    missing = robot.wait_state("missing", "failed")
    assert "cannot start" in missing["error"] and program in missing["error"]
    assert robot.row("clean")["restarts"] == 0

    def launched_missing() -> dict[str, Any] | None:  # /status carries the supervisor's latest heartbeat
        rows = json.loads(robot.instance.command("/status")).get("Launched", [])
        return next((r for r in rows if r.get("name") == "missing" and r.get("state") == "failed"), None)
    beat_row = wait_until(launched_missing, WAIT_S, 0.2, "/status Launched with the failed program")
    assert beat_row["error"].startswith("cannot start /nonexistent/robot-program"), beat_row
    assert len(beat_row["error"]) == BEAT_ERROR_CHARS and beat_row["error"].endswith("…"), beat_row


def launch_cli(config_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`launch.py --config-dir <config_dir> <args>` to completion (status, peripheral, logs)."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), "--config-dir", str(config_dir), *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)


def spawn_launch(config_dir: Path, out: Path, *args: str) -> subprocess.Popen:
    """`launch.py --headless` in its own session, output to out."""
    with open(out, "ab") as log:
        return subprocess.Popen([sys.executable, str(REPO_ROOT / "launch.py"), "--headless", "--config-dir",
                                 str(config_dir), *args], cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_launch(process: subprocess.Popen) -> None:
    """SIGTERM the supervisor (it stops its actors and peripherals) and wait; SIGKILL if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def satellite_rows(config_dir: Path, bus: str) -> dict[str, dict[str, Any]]:
    """The satellite supervisor's launched peripherals (`launch.py --join ... status --json`)."""
    done = launch_cli(config_dir, "--join", bus, "status", "--json")
    if done.returncode != 0:
        return {}
    return {row["name"]: row for row in json.loads(done.stdout)["supervisor"].get("peripherals") or []}


def test_a_satellite_launches_its_own_peripherals(tmp_path: Path) -> None:
    """A satellite (`launch.py --join`) starts the peripherals.toml of its own config folder; they register with
    the main board's gateway, and the satellite's `peripheral list` joins them (registered as ...)."""
    main, satellite = tmp_path / "main", tmp_path / "sat"
    command_port = write_test_config(main)["command_port"]
    bus = f"tcp://127.0.0.1:{free_port_range(BUS_PORTS)[0]}"
    pids = tmp_path / "arm.pids"
    processes = [spawn_launch(main, tmp_path / "main.out", "--bus", bus, "--only", "broker,state,gateway")]
    try:
        wait_until(lambda: launch_cli(main, "--bus", bus, "status", "--json").returncode == 0
                   and (main / "keys" / "client.key_secret").exists(), WAIT_S, 0.2, "the main board")
        (satellite / "keys").mkdir(parents=True)
        for name in ("server.key", "client.key", "client.key_secret"):
            shutil.copy2(main / "keys" / name, satellite / "keys" / name)
        # the fake reads the command port from orch.cf in its cwd: the main board's, as a real one is told its address
        (satellite / "peripherals.toml").write_text(entry("arm", "--name", "Arm_Engine", "--pid-file", str(pids),
                                                          name="Arm_Engine", cwd=str(main)))
        processes.append(spawn_launch(satellite, tmp_path / "sat.out", "--join", bus, "--satellite-name", "pi"))
        row = wait_until(lambda: (r := satellite_rows(satellite, bus).get("arm")) and r["registered"] and r, WAIT_S,
                         0.2, "the satellite's peripheral to register with the main board")
        assert row["state"] == "running" and row["peripheral"] == "Arm_Engine"
        assert "Arm_Engine" in send_line(command_port, "/list"), "not registered with the main board's gateway"
        listed = launch_cli(satellite, "--join", bus, "peripheral", "list")
        assert listed.returncode == 0 and "arm" in listed.stdout and "running" in listed.stdout, listed
        assert "registered as Arm_Engine" in listed.stdout, listed.stdout
        assert "registered Arm_Engine" in (satellite / "logs" / "peripherals" / "arm.log").read_text()
        main_list = launch_cli(main, "--bus", bus, "peripheral", "list")
        assert main_list.stdout.startswith("no launched peripherals"), main_list  # each board launches its own file
        leader = pid_lines(pids)[0][1]
        stop_launch(processes.pop())  # the satellite stops: its peripherals go with it, the main board stays
        assert not alive(leader), "the satellite left its peripheral behind"
    finally:
        for process in reversed(processes):
            stop_launch(process)
        kill_quietly([pid for _, pid, _ in pid_lines(pids)])


def test_uuid_join_survives_a_kill_and_restart(robot: Robot) -> None:
    """An entry with `uuid` is joined by it alone: a decoy registered under the entry's name is never taken, and after
    kill -9 the restarted process registers the same uuid again and the row is joined again (status and list)."""
    fixed = "3484b12d-4330-41ce-bf08-9fe42c1f6a01"
    pids = robot.pid_file("llm")
    robot.start(entry("llm", "--name", "LLM_Engine", "--uuid", fixed, "--pid-file", str(pids), uuid=fixed, name="llm",
                      backoff=0.1)
                + entry("decoy", "--name", "llm", name="llm"))  # under the llm entry's name, with a uuid of its own
    robot.wait_state("decoy", "running", registered=True)
    first = robot.wait_state("llm", "running", registered=True)
    assert (first["uuid"], first["peripheral"]) == (fixed, "LLM_Engine"), first
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_until(lambda: (r := robot.row("llm"))["pid"] not in (None, first["pid"]) and r["registered"] and r,
                       WAIT_S, 0.05, "llm restarted and registered again")
    assert (again["uuid"], again["peripheral"], again["restarts"], again["last_exit"]) == (fixed, "LLM_Engine", 1,
                                                                                          -signal.SIGKILL), again
    assert len(pid_lines(pids)) == 2
    records = [p for p in robot.instance.state_client().request(Op.SNAPSHOT)["peripherals"] if p["uuid"] == fixed]
    assert [r["name"] for r in records] == ["LLM_Engine"], records  # the same record, re-registered, not a new one
    status = run_launch(robot, "status")
    listed = run_launch(robot, "peripheral", "list")
    for shown in (status.stdout, listed.stdout):
        line = next(text for text in shown.splitlines() if text.strip().startswith("llm "))
        assert "running" in line and "restarts 1" in line and "registered as LLM_Engine" in line, shown


def read_until(stream: Any, wanted: bytes, timeout: float) -> bytes:
    """What a child wrote to its stdout pipe, read until wanted is in it or timeout passes."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        if select.select([stream], [], [], 0.1)[0]:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
    return seen


def test_logs_follow_keeps_every_line_across_rotations(robot: Robot) -> None:
    """`launch.py logs <name> -f` goes on across rotations (a log of 1 KiB rotates every ten lines) and loses no
    line: what was written to the old file before the follower noticed the new one is printed too, in order."""
    count = 60
    padding = "x" * 80  # lines of about 100 bytes
    robot.start(entry("chatty", "--echo-stdin", stdin=True, log_max_bytes=1024, log_backups=10))
    robot.wait_state("chatty", "running", registered=True)
    follower = subprocess.Popen([sys.executable, str(REPO_ROOT / "launch.py"), "--config-dir", str(robot.config_dir),
                                 "logs", "chatty", "-f", "-n", "0"], stdout=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        seen = b""
        deadline = time.monotonic() + WAIT_S
        while b"got: sync\n" not in seen and time.monotonic() < deadline:  # until the follower is at the end, following
            robot.control("send", "chatty", text="sync")
            seen += read_until(follower.stdout, b"got: sync\n", SYNC_WAIT_S)
        assert b"got: sync\n" in seen, seen
        for index in range(count):
            robot.control("send", "chatty", text=f"line-{index:04d} {padding}")
        seen += read_until(follower.stdout, f"got: line-{count - 1:04d} {padding}\n".encode(), WAIT_S)
    finally:
        follower.kill()
        follower.wait(timeout=5)
    rotated = robot.config_dir / "logs" / "peripherals" / "chatty.log.1"
    assert rotated.exists(), "the log never rotated: the test proves nothing"
    got = [line for line in seen.decode().splitlines() if line.startswith("got: line-0")]
    assert got == [f"got: line-{index:04d} {padding}" for index in range(count)], " ".join(line[10:14] for line in got)
