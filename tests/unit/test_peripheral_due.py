"""PeripheralManager.next_due: the supervisor sleeps until the peripherals' next deadline, and no longer.

Real processes, no orchestrator: the manager is driven by hand (tick(), control()) and asked what is due at
chosen instants, so each deadline is checked exactly, not by waiting for it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from actors.core.settings import Runtime
from actors.supervisor.launchfile import PeripheralSpec
from actors.supervisor.peripherals import GROUP_FINISH_POLL_S, PeripheralManager
from tests.support.instances import SUPPORT_DIR, wait_until

FAKE = str(SUPPORT_DIR / "fake_peripheral.py")
WAIT_S = 10.0
SLACK_S = 0.5  # time spent between setting a deadline and asking about it, on a loaded machine
BACKOFF_S = 7.0
STOP_TIMEOUT_S = 8.0
START_TIMEOUT_S = 9.0
LATE_S = 0.01  # just past a deadline


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[PeripheralManager]:
    runtime = Runtime.for_config_dir(tmp_path / "config")
    runtime.config_dir.mkdir(parents=True)
    made = PeripheralManager(runtime)  # never opened: no follower, so no peripheral counts as registered
    try:
        yield made
    finally:
        made.close()


def spec(key: str, *args: str, **values: object) -> PeripheralSpec:
    return PeripheralSpec(key=key, command=(sys.executable, FAKE, "--no-register", *args), cwd=".", **values)


def settled(manager: PeripheralManager) -> None:
    """Ticks until every entry is running (or held), the watchdog included."""
    def done() -> bool:
        manager.tick()
        return manager.watchdog is not None and all(e.alive or e.held or e.failed for e in manager.entries.values())
    wait_until(done, WAIT_S, 0.02, "the peripherals to start")


def test_nothing_declared_waits_only_for_the_launch_files_safety_poll(manager: PeripheralManager) -> None:
    now = time.monotonic()
    manager.tick()
    assert manager.next_due(now) == pytest.approx(manager.next_file_check - now)
    assert manager.next_due(now) > 5.0  # a kernel watch tells about an edit: the poll is only a safety net


def test_a_crash_is_due_again_when_its_backoff_ends(manager: PeripheralManager) -> None:
    manager.apply({"crashy": spec("crashy", "--crash-after", "0.5", backoff=BACKOFF_S, start_timeout=60.0)})
    settled(manager)
    entry = manager.entries["crashy"]
    wait_until(lambda: entry.process.poll() is not None, WAIT_S, 0.02, "the crash")
    manager.tick()
    crashed = time.monotonic()
    assert entry.state(time.monotonic()) == "backoff"
    assert BACKOFF_S - SLACK_S <= manager.next_due(crashed) <= BACKOFF_S
    assert manager.next_due(entry.next_start + LATE_S) == 0.0
    manager.tick()
    assert entry.process is None, "started before its backoff ended"


def test_a_stop_is_due_at_its_sigkill_then_watched_until_the_group_is_gone(manager: PeripheralManager) -> None:
    manager.apply({"stubborn": spec("stubborn", "--ignore-term", stop_timeout=STOP_TIMEOUT_S, start_timeout=60.0)})
    settled(manager)
    entry = manager.entries["stubborn"]
    assert manager.control({"action": "stop", "name": "stubborn"})["done"] == ["stubborn: stopping"]
    asked = time.monotonic()
    assert STOP_TIMEOUT_S - SLACK_S <= manager.next_due(asked) <= STOP_TIMEOUT_S
    assert manager.next_due(entry.stop_deadline - 1.0) == pytest.approx(1.0)
    late = entry.stop_deadline + LATE_S  # SIGKILL sent: its leader's exit wakes the loop, else it is looked at again
    assert manager.next_due(late) == pytest.approx(GROUP_FINISH_POLL_S), "a leader outliving its SIGKILL"
    leader = entry.process
    entry.stop_deadline = time.monotonic()  # as if stop_timeout had passed
    manager.tick()
    leader.wait(timeout=WAIT_S)
    wait_until(lambda: manager.tick() or entry.state(time.monotonic()) == "stopped", WAIT_S, 0.02, "stopped")
    assert leader.returncode < 0 and manager.next_due(time.monotonic()) > STOP_TIMEOUT_S


def test_a_silent_program_is_due_for_its_not_registered_flag_then_nothing(manager: PeripheralManager) -> None:
    manager.apply({"mute": spec("mute", start_timeout=START_TIMEOUT_S)})
    settled(manager)
    entry = manager.entries["mute"]
    now = time.monotonic()
    assert START_TIMEOUT_S - SLACK_S <= manager.next_due(now) <= START_TIMEOUT_S
    entry.started_mono -= START_TIMEOUT_S + LATE_S  # as if start_timeout had passed
    manager.tick()
    assert entry.flagged
    assert manager.next_due(time.monotonic()) > START_TIMEOUT_S, "flagged once: nothing timed is left"


def test_after_holds_the_first_start_until_its_start_timeout(manager: PeripheralManager) -> None:
    manager.apply({"first": spec("first", start_timeout=60.0),
                   "second": spec("second", after=("first",), start_timeout=START_TIMEOUT_S)})
    wait_until(lambda: manager.tick() or manager.entries["first"].alive, WAIT_S, 0.02, "first to start")
    second = manager.entries["second"]
    assert second.state(time.monotonic()) == "waiting"
    gate = second.waiting_since + START_TIMEOUT_S
    assert manager.next_due(gate - 1.0) == pytest.approx(1.0)
    assert manager.next_due(gate + LATE_S) == 0.0
