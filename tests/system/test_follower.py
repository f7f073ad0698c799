"""Following the state keeper's replicated state: the shared decision core, both flavours, and a keeper restart
that every follower (gateway, router, scanner, UI, supervisor flavour) must get through by resyncing."""
from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from hypothesis import given, settings, strategies as st

from actors.core.errors import Unavailable
from actors.core.follower import AsyncReplicaFollower, FollowerCore, SyncReplicaFollower
from actors.core.protocol import Heartbeat, Op, Reply, StateUpdate, Topic, encode
from actors.core.settings import Runtime
from actors.ui.busview import BusView
from tests.support.instances import Instance, send_line, start_instance, wait_until

RETRY_S = 1.0
EPOCH = "epoch-a"
TIMEOUT_S = 20.0
IDLE_WINDOW_S = 2.0
MAX_WAITING_CPU_SHARE = 0.2  # of one core: waiting is sleeping (a spinning loop takes about all of it)
ACTORS = ("gateway", "router-1", "scanner")  # the asyncio followers, each in its own process


def snapshot(epoch: str = EPOCH, seq: int = 1, peripherals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"epoch": epoch, "seq": seq, "config": {}, "peripherals": peripherals or [], "routes": []}


def update(seq: int, epoch: str = EPOCH, key: str = "r") -> StateUpdate:
    route = {"name": key, "incoming": "a", "outgoing": "b"}
    return StateUpdate(epoch=epoch, seq=seq, kind="route", key=key, value=route)


def keeper_beat(epoch: str, seq: int) -> Heartbeat:
    return Heartbeat(actor="state", pid=1, host="h", started_at=0.0, stats={"epoch": epoch, "seq": seq})


def frames(message: Any) -> list[bytes]:
    return [Topic.STATE.value, encode(message)]


def in_step(now: float = 100.0) -> FollowerCore:
    core = FollowerCore(retry_s=RETRY_S)
    core.asking(now)
    assert core.take_snapshot(snapshot())
    return core


# ---- the decision core -------------------------------------------------------------------------------
def test_a_fresh_follower_asks_at_once_and_an_in_step_one_has_no_deadline() -> None:
    core = FollowerCore(retry_s=RETRY_S)
    assert core.ask_in(0.0) == 0.0
    core = in_step()
    assert core.ask_in(1e9) is None  # in step: nothing timed, so an idle actor never wakes for its replica


def test_a_gap_in_the_updates_asks_for_a_snapshot() -> None:
    core = in_step()
    assert core.take_frames(frames(update(2)))[1] is True and core.ask_in(200.0) is None
    message, changed = core.take_frames(frames(update(4)))  # seq 3 lost
    assert isinstance(message, StateUpdate) and not changed
    assert core.ask_in(200.0) == 0.0 and core.replica.resyncs == 1


def test_a_missed_trailing_update_shows_in_the_keepers_heartbeat() -> None:
    core = in_step()
    core.take_frames(frames(keeper_beat(EPOCH, 1)))
    assert core.ask_in(200.0) is None
    core.take_frames(frames(keeper_beat(EPOCH, 2)))
    assert core.ask_in(200.0) == 0.0


def test_a_new_epoch_in_an_update_or_a_beat_asks_again() -> None:
    by_update, by_beat = in_step(), in_step()
    by_update.take_frames(frames(update(2, epoch="epoch-b")))  # a restarted keeper numbers from its own start
    by_beat.take_frames(frames(keeper_beat("epoch-b", 0)))
    assert by_update.ask_in(200.0) == 0.0 and by_beat.ask_in(200.0) == 0.0


def test_a_late_reply_to_a_superseded_ask_is_not_loaded() -> None:
    core = FollowerCore(retry_s=RETRY_S)
    stale = core.asking(0.0)
    current = core.asking(RETRY_S)
    late = Reply(ok=True, result=snapshot(epoch="old-keeper"), req_id=stale)
    assert core.take_reply(encode(late)) is False and core.replica.epoch is None
    assert core.take_reply(encode(Reply(ok=True, result=snapshot(), req_id=current))) is True
    assert core.replica.ready and core.ask_in(0.0) is None


def test_retries_are_paced_from_the_last_ask_answered_or_not() -> None:
    core = FollowerCore(retry_s=RETRY_S)
    core.asking(10.0)
    assert abs(core.ask_in(10.3) - 0.7) < 1e-9
    assert core.ask_in(10.0 + RETRY_S) == 0.0
    req_id = core.asking(11.0)
    assert core.take_reply(encode(Reply(ok=False, error="busy", code=1, req_id=req_id))) is False
    assert abs(core.ask_in(11.2) - 0.8) < 1e-9  # a quick refusal is not asked again at once: no busy loop


def test_one_complaint_per_keeper_outage() -> None:
    core = FollowerCore(retry_s=RETRY_S)
    assert [core.failed(), core.failed(), core.failed()] == [True, False, False]
    core.take_snapshot(snapshot())
    assert core.failed() is True


def test_garbage_from_the_bus_or_the_keeper_is_counted_never_raised() -> None:
    core = in_step()
    assert core.take_frames([b"state"]) == (None, False)
    assert core.take_frames([b"state", b"\xc1"]) == (None, False)
    assert core.take_reply(b"\xc1not msgpack") is False
    req_id = core.asking(0.0)
    core.replica.needs_snapshot = True
    no_tables = Reply(ok=True, result={"epoch": "e"}, req_id=req_id)
    assert core.take_reply(encode(no_tables)) is False
    assert core.dropped == 4 and core.ask_in(0.0) is not None and core.replica.seq == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_any_frames_are_taken_or_counted(raw: list[bytes]) -> None:
    core = in_step()
    before = core.dropped
    message, _ = core.take_frames(raw)
    assert (message is None) == (core.dropped == before + 1)


ANY = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=8),
                   lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                   max_leaves=12)
RECORD = st.fixed_dictionaries({"uuid": st.text(max_size=4), "name": st.text(max_size=4)}) | ANY
NEAR_SNAPSHOT = st.fixed_dictionaries({"epoch": st.text(max_size=4) | ANY, "seq": st.integers(0, 9) | ANY,
                                       "config": st.just({}) | ANY, "peripherals": st.lists(RECORD, max_size=3) | ANY,
                                       "routes": st.lists(RECORD, max_size=3) | ANY})


@settings(max_examples=300, deadline=None)
@given(ANY | NEAR_SNAPSHOT)
def test_any_snapshot_shape_is_loaded_or_counted(result: Any) -> None:
    core = FollowerCore(retry_s=RETRY_S)
    req_id = core.asking(0.0)
    loaded = core.take_reply(encode(Reply(ok=True, result=result, req_id=req_id)))
    assert loaded == core.replica.ready
    assert loaded or (core.dropped == 1 and core.replica.epoch is None and core.ask_in(0.0) is not None)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["peripheral", "route", "config", "reset", "bogus"]),
       ANY)
def test_an_update_of_any_value_is_applied_or_resynced(kind: str, value: Any) -> None:
    core = in_step()
    message, _ = core.take_frames(frames(StateUpdate(epoch=EPOCH, seq=2, kind=kind, key="k", value=value)))
    assert message is not None
    assert core.replica.seq == 2 or core.ask_in(0.0) == 0.0


def test_a_held_update_no_table_takes_costs_a_resync_not_the_follower() -> None:
    core = FollowerCore(retry_s=RETRY_S)
    req_id = core.asking(0.0)
    unusable = StateUpdate(epoch=EPOCH, seq=2, kind="config", key="", value=[1, 2])
    core.take_frames(frames(unusable))  # held until the snapshot, then replayed on it
    assert core.take_reply(encode(Reply(ok=True, result=snapshot(), req_id=req_id))) is False
    assert core.dropped == 1 and core.ask_in(RETRY_S) == 0.0


# ---- the asyncio flavour: asleep while in step -----------------------------------------------------
class QueueSub:
    """A SUB socket stand-in fed by the test."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[bytes]] = asyncio.Queue()

    async def recv_multipart(self) -> list[bytes]:
        return await self.queue.get()

    def close(self, linger: int = 0) -> None:
        pass


class CountingClient:
    """An AsyncRequestClient stand-in: fails `failures` times (a keeper away), then answers with snapshots."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.asked: list[float] = []
        self.epoch = EPOCH

    async def request(self, op: Any, timeout: float = 0.0, **_: Any) -> Any:
        assert op == Op.SNAPSHOT
        self.asked.append(time.monotonic())
        if len(self.asked) <= self.failures:
            raise Unavailable("keeper away")
        return snapshot(self.epoch, 1)


def test_the_async_follower_asks_once_then_sleeps_until_a_gap() -> None:
    async def scenario() -> tuple[int, int, int, list[StateUpdate | None]]:
        sub, client, changes = QueueSub(), CountingClient(failures=2), []
        follower = AsyncReplicaFollower(sub, client, "test", on_change=changes.append)  # type: ignore[arg-type]
        tasks = [asyncio.create_task(t) for t in follower.tasks()]
        await asyncio.wait_for(follower.first.wait(), 5)
        after_start = len(client.asked)
        await asyncio.sleep(0.3)  # in step: nothing asked meanwhile
        idle = len(client.asked)
        client.epoch = "epoch-b"
        await sub.queue.put(frames(keeper_beat("epoch-b", 7)))  # the keeper restarted
        await asyncio.wait_for(_until(lambda: follower.replica.epoch == "epoch-b"), 5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return after_start, idle, len(client.asked), changes

    after_start, idle, total, changes = asyncio.run(scenario())
    assert (after_start, idle, total) == (3, 3, 4)  # two refusals, a snapshot; nothing while in step; one resync
    assert changes == [None, None]


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


# ---- the sync flavour: never blocks, and holds retries while the bus is dead -------------------------
def test_the_sync_follower_never_blocks_and_holds_retries_while_told(tmp_path: Path) -> None:
    import zmq
    context = zmq.Context()
    alive = [False]
    endpoints = Runtime.for_config_dir(tmp_path / "config").endpoints  # nobody there: a dead bus
    follower = SyncReplicaFollower(context, endpoints, may_retry=lambda: alive[0])
    try:
        began = time.monotonic()
        assert follower.poll() is False  # the first ask leaves (nobody is there), nothing waited for
        assert follower.core.asks == 1 and follower.due_in() is None  # no deadline while the bus is dead
        alive[0] = True
        assert 0 < follower.due_in() <= RETRY_S
        follower.core.asked_at = time.monotonic() - RETRY_S
        follower.poll()
        assert follower.core.asks == 2 and time.monotonic() - began < 0.5
    finally:
        follower.close()
        context.destroy(linger=0)


# ---- the system: a keeper away, then killed and restarted -----------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of pid so far (/proc/<pid>/task/*/schedstat, nanoseconds)."""
    tasks = Path(f"/proc/{pid}/task")
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks.iterdir()) / 1e9


def test_actors_waiting_for_an_absent_keeper_sleep(tmp_path: Path) -> None:
    """A router once spun (a zero sleep) until its first snapshot: a whole core while the keeper was away."""
    instance = start_instance(tmp_path, only=["broker", "gateway", "router"], wait=False)
    try:
        def started() -> dict[str, int] | None:
            pids = {name: instance.child_pid(name) for name in ("gateway", "router-1")}
            return pids if all(pids.values()) else None  # type: ignore[return-value]
        pids = wait_until(started, TIMEOUT_S, message="gateway and router started")
        time.sleep(1.0)  # past their start-up
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(IDLE_WINDOW_S)
        used = {name: (cpu_seconds(pid) - before[name]) / IDLE_WINDOW_S for name, pid in pids.items()}
        assert all(share < MAX_WAITING_CPU_SHARE for share in used.values()), used
    finally:
        instance.stop()


def child_stats(instance: Instance, name: str) -> dict[str, Any]:
    return next((c.get("stats") or {} for c in instance.status()["children"] if c["name"] == name), {})


def resynced(instance: Instance, name: str) -> bool:
    stats = child_stats(instance, name)
    return stats.get("resyncs", 0) >= 1 and stats.get("ready") is True


def test_every_follower_resyncs_after_the_keeper_is_killed_and_restarted(tmp_path: Path) -> None:
    instance = start_instance(tmp_path, only=["broker", "state", "gateway", "router", "scanner"])
    ui = BusView(instance.runtime, instance.context, "ui-test")
    supervisor_flavour = SyncReplicaFollower(instance.context, instance.runtime.endpoints)
    sync_followers = [ui.follower, supervisor_flavour]

    def poll_sync() -> None:
        ui.drain()
        ui.maybe_snapshot()
        supervisor_flavour.poll()

    try:
        wait_until(lambda: (poll_sync(), all(f.replica.ready for f in sync_followers))[1], TIMEOUT_S,
                   message="first snapshots")
        for actor in ACTORS:
            wait_until(lambda: child_stats(instance, actor).get("ready") is True, TIMEOUT_S,
                       message=f"{actor}'s first snapshot")
        first_epoch = ui.replica.epoch
        killed = instance.child_pid("state")
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: instance.child_pid("state") not in (None, killed), TIMEOUT_S, message="a new state keeper")
        instance.wait_ready()
        name, uid = "After_Restart", str(uuid.uuid4())
        client = instance.state_client()
        client.request(Op.REGISTER, name=name, uuid=uid, port=1, timeout=TIMEOUT_S)
        client.request(Op.ADD_ROUTE, name="again", incoming=name, outgoing=name, timeout=TIMEOUT_S)
        wait_until(lambda: name in send_line(instance.command_port, "/list"), TIMEOUT_S, message="the gateway's /list")
        for actor in ACTORS:
            wait_until(lambda: resynced(instance, actor), TIMEOUT_S, message=f"{actor} resynced")
        wait_until(lambda: child_stats(instance, "router-1").get("routes") == 1, TIMEOUT_S,
                   message="the router's new route")

        def sync_followers_caught_up() -> bool:
            poll_sync()
            return all(uid in f.replica.peripherals and f.replica.epoch != first_epoch for f in sync_followers)
        wait_until(sync_followers_caught_up, TIMEOUT_S, message="the UI's and the supervisor's replicas")
        assert ui.snapshots >= 2 and supervisor_flavour.snapshots >= 2
    finally:
        ui.close()
        supervisor_flavour.close()
        instance.stop()
