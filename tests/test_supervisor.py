"""The supervisor: restarts what dies, stops everything, refuses a second instance."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from actors.settings import Runtime
from actors.supervisor import Supervisor
from conftest import REPO_ROOT, start_instance, wait_until


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def test_a_child_killed_with_sigkill_is_replaced_and_ready(core):
    old = core.child_pid("state")
    os.kill(old, signal.SIGKILL)
    new = wait_until(lambda: (pid := core.child_pid("state")) not in (None, old) and pid, 10, message="a new state keeper")
    core.wait_ready()
    assert alive(new) and not alive(old)
    restarted = next(c for c in core.status()["children"] if c["name"] == "state")
    assert restarted["restarts"] == 1


def test_sigterm_stops_every_process_within_seconds(tmp_path):
    instance = start_instance(tmp_path, only=["broker", "state"])
    pids = [c["pid"] for c in instance.status()["children"]]
    started = time.monotonic()
    instance.process.send_signal(signal.SIGTERM)
    assert instance.process.wait(timeout=10) == 0
    wait_until(lambda: not any(alive(p) for p in pids), 5, message="children to exit")
    assert time.monotonic() - started < 5
    instance.stop()


def test_a_second_instance_on_the_same_config_folder_is_refused(core):
    result = subprocess.run([sys.executable, "launch.py", "--headless", "--config-dir", str(core.config_dir), "--only", "broker,state"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=15)
    assert result.returncode == 2
    assert "already running" in result.stderr
    assert core.status()["ready"]


def test_status_and_stop_commands_talk_to_the_running_instance(core):
    status = subprocess.run([sys.executable, "launch.py", "--config-dir", str(core.config_dir), "status"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=15)
    assert status.returncode == 0 and "state" in status.stdout and "running" in status.stdout
    stop = subprocess.run([sys.executable, "launch.py", "--config-dir", str(core.config_dir), "stop"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=15)
    assert stop.returncode == 0
    assert core.process.wait(timeout=10) == 0


def test_status_of_a_missing_instance_fails_clearly(tmp_path):
    result = subprocess.run([sys.executable, "launch.py", "--config-dir", str(tmp_path), "status"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=15)
    assert result.returncode == 3 and "not reachable" in result.stderr


def test_killed_supervisor_leaves_no_orphans(tmp_path):
    instance = start_instance(tmp_path, only=["broker", "state"])
    pids = [c["pid"] for c in instance.status()["children"]]
    instance.process.kill()
    instance.process.wait(timeout=5)
    wait_until(lambda: not any(alive(p) for p in pids), 5, message="orphans to notice and exit")
    again = start_instance(tmp_path, only=["broker", "state"])
    assert again.status()["ready"]
    again.stop()


def test_a_child_that_keeps_crashing_is_left_stopped(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("actors.supervisor", fromlist=["ACTOR_MODULES"]).ACTOR_MODULES, "crasher", "tests.crasher")
    runtime = Runtime.for_config_dir(tmp_path)
    runtime.ensure_dirs()
    supervisor = Supervisor(runtime, ["crasher"])
    monkeypatch.setattr("actors.supervisor.BACKOFF_BASE_S", 0.01)
    child = supervisor.children[0]
    supervisor._spawn(child)
    try:
        wait_until(lambda: supervisor._check_children() or child.failed, 20, message="the flapping limit")
        assert child.restarts >= 4 and not child.alive
    finally:
        supervisor.stop_all()
