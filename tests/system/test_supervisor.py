"""The supervisor: restarts what dies, stops everything, refuses a second instance."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from actors.core.runfolder import ensure_runtime_dirs
from actors.core.settings import Runtime
from actors.supervisor.supervisor import ACTOR_MODULES, FLAP_LIMIT, Supervisor
from tests.support.instances import REPO_ROOT, send_line, start_instance, wait_until, write_test_config


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
    monkeypatch.setitem(ACTOR_MODULES, "crasher", "tests.support.crasher")
    runtime = Runtime.for_config_dir(tmp_path)
    ensure_runtime_dirs(runtime)
    supervisor = Supervisor(runtime, ["crasher"])
    monkeypatch.setattr("actors.supervisor.supervisor.BACKOFF_BASE_S", 0.01)
    child = supervisor.children[0]
    supervisor._spawn(child)
    try:
        wait_until(lambda: supervisor._check_children() or child.failed, 20, message="the flapping limit")
        assert child.restarts >= 4 and not child.alive
    finally:
        supervisor.stop_all()


def launch_status(config_dir, *extra):
    """`launch.py status` as a user runs it: (returncode, stdout)."""
    result = subprocess.run([sys.executable, "launch.py", "--config-dir", str(config_dir), "status", *extra], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=15)
    return result.returncode, result.stdout


def kill_and_wait_for_successor(instance, name, old):
    os.kill(old, signal.SIGKILL)
    return wait_until(lambda: (pid := instance.child_pid(name)) not in (None, old) and pid, 15, message=f"a new {name}")


def test_the_state_keeper_is_never_given_up_on_and_status_says_degraded_meanwhile(tmp_path):
    """Old code: the 6th quick SIGKILL left the keeper failed for good, /register failed, and status still said ready."""
    instance = start_instance(tmp_path, only=["broker", "state", "gateway"])
    try:
        pid = instance.child_pid("state")
        for _ in range(FLAP_LIMIT):
            pid = kill_and_wait_for_successor(instance, "state", pid)
        os.kill(pid, signal.SIGKILL)  # one more than the flapping limit: backing off several seconds now
        seen = wait_until(lambda: (s := instance.status())["health"] == "degraded" and s, 5, message="a degraded status")
        assert any(reason.startswith("state ") for reason in seen["reasons"]), seen["reasons"]
        code, text = launch_status(instance.config_dir)
        assert code == 0 and "degraded: " in text.splitlines()[0] and "state" in text.splitlines()[0], text
        code, as_json = launch_status(instance.config_dir, "--json")
        supervisor = json.loads(as_json)["supervisor"]
        assert supervisor["health"] == "degraded" and any("state" in r for r in supervisor["reasons"])
        state = next(c for c in supervisor["children"] if c["name"] == "state")
        assert state["state"] != "failed"
        wait_until(lambda: instance.status()["health"] == "ready", 20, 0.1, "the keeper back and the status ready")
        wait_until(lambda: instance.command("/register Lamp 11111111-2222-4333-8444-555555555555 40001").startswith("/ack "),
                   10, 0.2, "/register to work")
        code, text = launch_status(instance.config_dir)
        assert text.splitlines()[0].split(", ")[2].startswith("ready"), text
    finally:
        instance.stop()


def crash_supervisor(tmp_path, monkeypatch, kinds, routers=1):
    """A supervisor whose children (of the given kinds) all exit at once: drives the flapping limit fast."""
    for kind in set(kinds):
        monkeypatch.setitem(ACTOR_MODULES, kind, "tests.support.crasher")
    monkeypatch.setattr("actors.supervisor.supervisor.BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr("actors.supervisor.supervisor.BACKOFF_MAX_S", 0.05)
    runtime = Runtime.for_config_dir(tmp_path)
    ensure_runtime_dirs(runtime)
    return Supervisor(runtime, kinds, routers=routers)


def run_until(supervisor, predicate, timeout=30):
    for child in supervisor.children:
        supervisor._spawn(child)
    try:
        wait_until(lambda: supervisor._check_children() or predicate(), timeout, 0.01, message="the supervisor")
    finally:
        supervisor.stop_all()


def test_essential_actors_are_restarted_past_the_flapping_limit(tmp_path, monkeypatch):
    supervisor = crash_supervisor(tmp_path, monkeypatch, ["broker", "state", "gateway", "scanner"])
    scanner = next(c for c in supervisor.children if c.kind == "scanner")
    essential = [c for c in supervisor.children if c.kind != "scanner"]
    run_until(supervisor, lambda: scanner.failed and all(c.restarts >= FLAP_LIMIT + 2 for c in essential))
    assert not any(c.failed for c in essential)
    health, reasons = supervisor.health(time.time())
    assert health != "ready" and any(r.startswith("scanner failed") for r in reasons)


def test_the_last_live_router_is_never_given_up_on(tmp_path, monkeypatch):
    supervisor = crash_supervisor(tmp_path, monkeypatch, ["router"], routers=2)
    first, second = supervisor.children
    run_until(supervisor, lambda: (first.failed or second.failed) and max(first.restarts, second.restarts) >= FLAP_LIMIT * 2)
    assert first.failed != second.failed  # one may be left stopped, the last one never


def test_backoff_is_capped_and_shown_as_degraded(tmp_path, monkeypatch):
    supervisor = crash_supervisor(tmp_path, monkeypatch, ["state"])
    supervisor.ready_after_s = 0.0
    child = supervisor.children[0]
    child.crash_times = [time.time()] * 40  # a long crash history must not overflow or grow the delay past the cap
    child.started_at = time.time()
    child.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    child.process.wait(timeout=5)
    supervisor._reap(child, time.time())
    assert child.next_start - time.monotonic() <= 0.05 + 0.01 and not child.failed
    health, reasons = supervisor.health(time.time())
    assert health == "degraded" and reasons[0].startswith("state down")


def test_a_gateway_whose_long_running_task_raises_exits_and_is_restarted(tmp_path, monkeypatch):
    """Its router watch dies: the gateway must not run on with a stale view, but exit non-zero and come back."""
    port = write_test_config(tmp_path)["command_port"]
    monkeypatch.setitem(ACTOR_MODULES, "gateway", "tests.support.dying_gateway")
    runtime = Runtime.for_config_dir(tmp_path)
    ensure_runtime_dirs(runtime)
    supervisor = Supervisor(runtime, ["broker", "state", "gateway"])
    gateway = next(c for c in supervisor.children if c.kind == "gateway")
    exits = []
    reap = supervisor._reap
    monkeypatch.setattr(supervisor, "_reap", lambda child, now: (exits.append((child.kind, child.process.returncode)), reap(child, now)))

    def restarted_and_serving() -> bool:
        if gateway.restarts < 1 or not gateway.alive:
            return False
        try:
            return send_line(port, "/help", timeout=1.0).startswith("Available commands:")
        except OSError:
            return False

    run_until(supervisor, restarted_and_serving)
    assert (tmp_path / "watch-task-crashed").exists()
    assert exits == [("gateway", 1)]
    assert "router watch failed (injected by the test)" in (runtime.log_dir / "gateway.log").read_text()
