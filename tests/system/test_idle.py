"""Idle cost: actors sleep until something is due, beat only as often as liveness needs, and hear only the beats they need.

The figures themselves (CPU %, wake-ups/s) are measured by bench/lifecycle_bench.py; these tests pin the
behaviours those figures rest on, so a fixed-period tick or a chatty heartbeat cannot come back unnoticed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import pytest
import zmq

from actors.core.bus import Heartbeater, beat_expiry, idle_beat_interval
from actors.gateway.dataplane import DataPlane
from actors.core.protocol import Heartbeat, Topic, decode_as, encode
from actors.core.runner import StopFlag
from actors.scanner.scanner import SWEEP_LEAD_S, next_sweep_at
from actors.core.settings import (HEARTBEAT_EXPIRY_S, HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, IDLE_HEARTBEAT_INTERVAL_S, STARTUP_BEAT_INTERVAL_S,
                                  STARTUP_BEATS, Endpoints, Runtime)
from tests.support.instances import start_instance, wait_until
from tests.support.procstat import context_switches, main_thread_sleeps

DETECTION_LIMIT_S = 3.0  # a dead actor or a silent satellite is counted out within this (the bound)
STOP_LIMIT_S = 1.0  # SIGTERM to exit of an idle actor asleep until its next 5 s beat
EVENT_WAIT_MS = 200


class FakePub:
    """Stands in for a PUB socket: keeps what was published."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[Heartbeat] = []

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        self.sent.append(decode_as(frames[1], Heartbeat))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ipc_endpoints(tmp_path) -> Endpoints:
    return Runtime.for_config_dir(tmp_path / "config").endpoints


# ---- heartbeats: as often as liveness needs -------------------------------------------------------
def test_liveness_bounds_hold_where_other_boards_watch(tmp_path) -> None:
    """A satellite beats every HEARTBEAT_INTERVAL_S on a tcp bus, and is counted out within 3 s, a lost beat tolerated."""
    tcp = dataclasses.replace(ipc_endpoints(tmp_path), events_in="tcp://127.0.0.1:1")
    assert idle_beat_interval(tcp) == HEARTBEAT_INTERVAL_S
    assert HEARTBEAT_EXPIRY_S <= DETECTION_LIMIT_S and HEARTBEAT_LIVENESS >= 2
    assert HEARTBEAT_EXPIRY_S == HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
    assert idle_beat_interval(ipc_endpoints(tmp_path)) == IDLE_HEARTBEAT_INTERVAL_S


def past_startup(heart: Heartbeater, clock: Clock, stats: dict) -> None:
    """Let the start-up beats go (they may reach nobody while the subscription joins)."""
    assert heart.maybe_beat(stats)  # the first beat at once: readiness does not wait
    for _ in range(STARTUP_BEATS - 1):
        clock.now += STARTUP_BEAT_INTERVAL_S
        assert heart.maybe_beat(stats)


def test_a_new_actor_beats_quickly_a_few_times_then_seldom(tmp_path, monkeypatch) -> None:
    """The first beats come every STARTUP_BEAT_INTERVAL_S (a subscription joining late misses only some), each
    announcing the idle expiry, so the actor is never counted out between the last quick beat and the next."""
    clock = Clock()
    monkeypatch.setattr("actors.core.bus.time.monotonic", clock)
    pub = FakePub()
    heart = Heartbeater("gateway", pub, ipc_endpoints(tmp_path))
    past_startup(heart, clock, {"n": 1})
    assert len(pub.sent) == STARTUP_BEATS and 0 < heart.due_in() <= IDLE_HEARTBEAT_INTERVAL_S
    assert all(beat.expiry_s == IDLE_HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS for beat in pub.sent)


def test_an_idle_actor_beats_seldom_and_says_when_to_count_it_out(tmp_path, monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr("actors.core.bus.time.monotonic", clock)
    pub = FakePub()
    heart = Heartbeater("gateway", pub, ipc_endpoints(tmp_path))
    past_startup(heart, clock, {"n": 1})
    clock.now += heart.due_in()
    assert heart.maybe_beat({"n": 1})
    for _ in range(int(IDLE_HEARTBEAT_INTERVAL_S / 0.25) - 1):
        clock.now += 0.25
        assert not heart.maybe_beat({"n": 1}), "unchanged figures beat before the idle interval"
    assert heart.due_in() == pytest.approx(0.25)
    clock.now += 0.25
    assert heart.maybe_beat({"n": 1})
    assert all(beat.expiry_s == IDLE_HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS for beat in pub.sent)


def test_idle_actors_of_a_board_beat_in_step(tmp_path, monkeypatch) -> None:
    """Idle beats fall on multiples of the idle interval of the monotonic clock every process shares, so the
    broker, the supervisor and the UI wake once per round for all of them, never further apart than the interval."""
    clock = Clock()
    monkeypatch.setattr("actors.core.bus.time.monotonic", clock)
    beat_times: dict[str, list[float]] = {"gateway": [], "router-1": []}
    hearts = {}
    for index, actor in enumerate(beat_times):
        clock.now = 1000.0 + 1.7 * index  # started at different moments
        hearts[actor] = Heartbeater(actor, FakePub(), ipc_endpoints(tmp_path))
    for _ in range(int(IDLE_HEARTBEAT_INTERVAL_S * 4 / 0.05)):
        clock.now += 0.05
        for actor, heart in hearts.items():
            if heart.maybe_beat({"n": 1}) and heart.beats > STARTUP_BEATS:
                beat_times[actor].append(round(clock.now, 6))
    gateway, router = beat_times.values()
    assert len(gateway) >= 3 and gateway[-3:] == router[-3:]
    assert all(later - earlier <= IDLE_HEARTBEAT_INTERVAL_S + 0.05 for earlier, later in zip(gateway, gateway[1:]))


def test_changed_figures_leave_within_the_busy_interval(tmp_path, monkeypatch) -> None:
    """/status and the UI must not show figures older than HEARTBEAT_INTERVAL_S while things happen."""
    clock = Clock()
    monkeypatch.setattr("actors.core.bus.time.monotonic", clock)
    pub = FakePub()
    heart = Heartbeater("router-1", pub, ipc_endpoints(tmp_path))
    past_startup(heart, clock, {"delivered": 0})
    clock.now += 0.1
    assert not heart.maybe_beat({"delivered": 5})  # not at once: at most one beat per HEARTBEAT_INTERVAL_S
    assert heart.due_in() == pytest.approx(HEARTBEAT_INTERVAL_S - 0.1)
    clock.now += HEARTBEAT_INTERVAL_S - 0.1
    assert heart.maybe_beat({"delivered": 5})
    assert pub.sent[-1].stats == {"delivered": 5}


def test_a_beat_without_an_expiry_gets_the_default() -> None:
    """An older sender's beat (no expiry_s) is judged as before."""
    beat = Heartbeat(actor="router-1@pi", pid=1, host="pi", started_at=0.0)
    assert beat_expiry(beat) == HEARTBEAT_EXPIRY_S


def test_the_data_plane_honours_each_routers_announced_expiry() -> None:
    clock = Clock()
    plane = DataPlane(lambda identity, body: None, clock=clock)
    plane.heard(b"local", expiry_s=IDLE_HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS)
    plane.heard(b"satellite")
    clock.now += HEARTBEAT_EXPIRY_S + 0.1
    assert plane.expire() == [b"satellite"]  # counted out within 3 s
    assert plane.live() == [b"local"]
    assert plane.next_expiry() == pytest.approx(clock.now - HEARTBEAT_EXPIRY_S - 0.1 + IDLE_HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS)
    clock.now += IDLE_HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
    assert plane.expire() == [b"local"]


# ---- waking: a stop ends a sleep at once ----------------------------------------------------------
def test_setting_the_stop_flag_makes_its_wakeup_fd_readable() -> None:
    stop = StopFlag()
    fd = stop.wakeup_fd()
    poller = zmq.Poller()
    poller.register(fd, zmq.POLLIN)
    assert not poller.poll(0)
    called: list[bool] = []
    stop.on_set(lambda: called.append(True))
    stop.set()
    assert poller.poll(0) and called == [True]


def test_idle_actors_stop_at_once_on_sigterm(tmp_path) -> None:
    """Every actor sleeps until its next (5 s) beat; SIGTERM must still end it at once, not at the next beat."""
    instance = start_instance(tmp_path)
    try:
        time.sleep(1.0)  # idle: every loop is asleep on its next deadline
        pids = {c["name"]: c["pid"] for c in instance.status()["children"] if c["pid"]}
        instance.process.send_signal(signal.SIGSTOP)  # the supervisor must not restart them meanwhile
        try:
            slow = {}
            for name, pid in pids.items():
                began = time.monotonic()
                os.kill(pid, signal.SIGTERM)
                wait_until(lambda: not _alive(pid), 5.0, 0.01, f"{name} to exit")
                slow[name] = time.monotonic() - began
            assert all(seconds < STOP_LIMIT_S for seconds in slow.values()), slow
        finally:
            instance.process.send_signal(signal.SIGCONT)
    finally:
        instance.stop()


def _alive(pid: int) -> bool:
    """Still running (a zombie left for the stopped supervisor to reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_actor_is_counted_out_at_once(orchestrator) -> None:
    """The supervisor sleeps until its next deadline; a child's death (SIGCHLD) wakes it, well within 3 s."""
    pid = orchestrator.child_pid("scanner")
    os.kill(pid, signal.SIGKILL)
    began = time.monotonic()
    wait_until(lambda: orchestrator.status()["health"] != "ready", DETECTION_LIMIT_S, 0.02, "the death to be noticed")
    assert time.monotonic() - began < DETECTION_LIMIT_S


# ---- subscriptions: only the beats each actor needs -----------------------------------------------
def test_the_keepers_beat_reaches_replicas_without_anyone_elses(core) -> None:
    """Replicas (router, scanner) subscribe to STATE only: they get the keeper's beat (its seq) and no other actor's."""
    sub = core.context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, Topic.STATE.value)
    sub.connect(core.runtime.endpoints.events_out)
    try:
        actors: set[str] = set()
        deadline = time.monotonic() + IDLE_HEARTBEAT_INTERVAL_S * 2
        while "state" not in actors and time.monotonic() < deadline:
            if sub.poll(EVENT_WAIT_MS):
                frames = sub.recv_multipart()
                if frames[0] == Topic.KEEPER_HEARTBEAT.value:
                    actors.add(decode_as(frames[1], Heartbeat).actor)
                else:
                    assert not frames[0].startswith(Topic.HEARTBEAT.value), frames[0]
        assert actors == {"state"}
    finally:
        sub.close()


def test_the_gateway_does_not_wake_for_other_actors_beats_and_status_still_lists_them(orchestrator) -> None:
    """/status gets the actors' beats from the supervisor (which hears them all for liveness), so a beat on the bus
    wakes the gateway no more: 300 beats published cost it a handful of wake-ups, not hundreds."""
    beats = 300
    pub = orchestrator.context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(orchestrator.runtime.endpoints.events_in)
    try:
        beat = Heartbeat(actor="router-99", pid=os.getpid(), host="elsewhere", started_at=time.time(),
                         expiry_s=IDLE_HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS)
        topic = Topic.HEARTBEAT.value + b"\x00router-99"
        wait_until(lambda: pub.send_multipart([topic, encode(beat)]) or "router-99" in actor_names(orchestrator),
                   5.0, 0.1, "the supervisor to pass a published beat to /status")
        gateway = orchestrator.child_pid("gateway")
        before = context_switches(gateway)
        for _ in range(beats):
            pub.send_multipart([topic, encode(beat)])
            time.sleep(0.002)
        time.sleep(0.2)
        woke = context_switches(gateway) - before
    finally:
        pub.close()
    assert woke < beats / 5, f"the gateway woke {woke} times for {beats} beats it does not need"
    assert {"supervisor", "broker", "state", "gateway", "router-1", "scanner"} <= actor_names(orchestrator)


def actor_names(instance) -> set[str]:
    return {actor["name"] for actor in json.loads(instance.command("/status")).get("Actors", [])}


@pytest.mark.parametrize("started", [1000.0, 1000.02, 1004.85, 1004.95, 1007.3])
def test_sweeps_end_just_before_the_boards_beat(started: float) -> None:
    """A sweep is due just before a multiple of scan_interval, so its figures leave with that round's beat instead
    of costing a beat of their own; never sooner than half an interval after the last sweep."""
    interval = 5.0
    due = next_sweep_at(started, interval)
    phase = (due + SWEEP_LEAD_S) % interval
    assert phase == pytest.approx(0) or phase == pytest.approx(interval)
    assert interval / 2 <= due - started <= interval * 1.5


def test_a_status_flood_does_not_keep_the_supervisor_busy(orchestrator) -> None:
    """/status asks the supervisor for the beats, but once per half second however many clients ask: 200 of them
    in a burst from 8 connections cost its loop a handful of wake-ups, and every answer still lists the actors."""
    from concurrent.futures import ThreadPoolExecutor

    supervisor = orchestrator.process.pid
    actor_names(orchestrator)  # the first answer, and the supervisor's start-up beats, are behind us
    time.sleep(0.5)
    before = main_thread_sleeps(supervisor)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: actor_names(orchestrator), range(200)))
    woke = main_thread_sleeps(supervisor) - before
    assert all({"supervisor", "gateway", "router-1"} <= names for names in answers)
    assert woke < 50, f"the supervisor woke {woke} times for 200 /status"
