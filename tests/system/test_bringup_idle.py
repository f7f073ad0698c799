"""Robot bring-up at rest: a supervisor with launched peripherals sleeps until something is due for them.

It used to look at them every 0.25 s. Now it sleeps until their next deadline (a backoff's end, a stop's SIGKILL,
a start_timeout), and what happens wakes it at once: an exit (SIGCHLD), a registration (the state follower's
sockets), a request. The CPU figures are measured by bench/bringup_bench.py; these tests pin the behaviour.
"""
from __future__ import annotations

import time

import zmq

from actors.core.protocol import Op, Topic
from tests.support.instances import wait_until
from tests.support.procstat import main_thread_sleeps
from tests.system import test_bringup
from tests.system.test_bringup import WAIT_S, Robot, entry, pid_lines

robot = test_bringup.robot  # the same fixture: a launch.py with a peripherals.toml, cleaned up whatever happens


IDLE_WINDOW_S = 3.0
OLD_TICK_WAKEUPS = int(IDLE_WINDOW_S / 0.25)  # what the former 0.25 s peripherals tick cost the main thread alone
IDLE_WAKEUP_LIMIT = 8  # one round of heartbeats (every 5 s on one board) costs 2 to 5; measured 14 to 25 with the tick
ON_TIME_S = 1.2  # a program's start, once due, until its first line of Python ran (its pid file), on a loaded machine


def test_an_idle_robot_does_not_wake_its_supervisor_on_a_fixed_period(robot: Robot) -> None:
    """Three declared peripherals, running and registered, doing nothing: the supervisor sleeps until something is
    due (a beat, a deadline) instead of looking at them every 0.25 s."""
    keys = ("alpha", "beta", "gamma")
    robot.start("".join(entry(key, "--pid-file", str(robot.pid_file(key))) for key in keys))
    for key in keys:
        robot.wait_state(key, "running", registered=True)
    supervisor = robot.instance.process.pid
    time.sleep(1.0)  # the start-up beats and the replies to our own status requests are over
    before = main_thread_sleeps(supervisor)
    time.sleep(IDLE_WINDOW_S)
    woke = main_thread_sleeps(supervisor) - before
    assert woke <= IDLE_WAKEUP_LIMIT < OLD_TICK_WAKEUPS, woke
    assert all(row["state"] == "running" and row["registered"] for row in robot.rows().values())


def test_registrations_exits_and_backoffs_are_acted_upon_on_time_with_nobody_asking(robot: Robot) -> None:
    """Nothing polls the supervisor here (pid files and the keeper are read, never its control socket): a registration
    starts what waits for it at once (the follower's sockets wake the loop), and a crash (SIGCHLD) is restarted when
    its backoff ends (a deadline), not at the next heartbeat round."""
    crash_after, backoff = 1.0, 1.5
    robot.start(entry("tts", "--register-delay", "2.5", "--pid-file", str(robot.pid_file("tts")))
                + entry("llm", "--pid-file", str(robot.pid_file("llm")), after=["tts"], start_timeout=60)
                + entry("crashy", "--crash-after", str(crash_after), "--pid-file", str(robot.pid_file("crashy")),
                        backoff=backoff))
    wait_until(lambda: pid_lines(robot.pid_file("llm")), WAIT_S, 0.05, "llm to start after tts registered")
    registered = next(p for p in robot.instance.state_client().request(Op.SNAPSHOT)["peripherals"]
                      if p["name"] == "tts")["last_seen"]
    started = pid_lines(robot.pid_file("llm"))[0][2]
    assert 0.0 <= started - registered <= ON_TIME_S, started - registered
    starts = wait_until(lambda: (rows := pid_lines(robot.pid_file("crashy")))[1:] and rows, WAIT_S, 0.05, "a restart")
    gap = starts[1][2] - starts[0][2]
    assert crash_after + backoff <= gap <= crash_after + backoff + ON_TIME_S, gap


def test_state_traffic_wakes_the_supervisor_at_once(robot: Robot) -> None:
    """The follower that joins launched peripherals to their registrations has its sockets in the supervisor's
    poller: an update on the state topic is read when it arrives, not at the next heartbeat round. Unreadable
    frames are sent (every follower counts and drops them) so that no table changes; each still wakes the loop."""
    sends, spacing_s = 40, 0.03
    robot.start(entry("solo", "--pid-file", str(robot.pid_file("solo"))))
    robot.wait_state("solo", "running", registered=True)
    pub = robot.instance.context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(robot.instance.runtime.endpoints.events_in)
    supervisor = robot.instance.process.pid
    try:
        time.sleep(0.5)  # the subscription reaches the new publisher
        before = main_thread_sleeps(supervisor)
        for _ in range(sends):
            pub.send_multipart([Topic.STATE.value, b"\xc1 not msgpack"])
            time.sleep(spacing_s)
        woke = main_thread_sleeps(supervisor) - before
    finally:
        pub.close()
    assert woke >= sends // 2, woke
    assert robot.row("solo")["registered"], "garbage on the state topic unsettled the join"
