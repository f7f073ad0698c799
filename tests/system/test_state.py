"""The state keeper as a real process behind the real broker."""
import json
import os
import random
import signal
import time

import pytest
import zmq

from actors.core.bus import connect_subscriber, parse_event
from actors.core.errors import DuplicateRoute, UnknownPeripheral
from actors.core.protocol import Heartbeat, Op, Reply, Request, StateUpdate, Topic, decode_as, encode
from actors.core.replica import StateReplica
from tests.support.instances import start_instance, wait_until

U = "12345678-1234-4234-8234-{:012d}"


def uid(i):
    return U.format(i)


def state_stats(instance):
    return next(c["stats"] for c in instance.status()["children"] if c["name"] == "state")


def test_registration_is_on_disk_when_acknowledged(core):
    client = core.state_client()
    record = client.request(Op.REGISTER, name="ASR_Engine", uuid=uid(1), port=6201)
    saved = core.read_json("orch.cf")["peripherals"]
    assert [(p["name"], p["uuid"], p["data_port"]) for p in saved] == [("ASR_Engine", uid(1), record["data_port"])]
    assert record["data_port"] in core.data_ports


def test_route_errors_come_back_as_narrow_exceptions(core):
    client = core.state_client()
    client.request(Op.REGISTER, name="A", uuid=uid(1), port=1)
    client.request(Op.REGISTER, name="B", uuid=uid(2), port=2)
    client.request(Op.ADD_ROUTE, name="r", incoming="A", outgoing="B")
    with pytest.raises(DuplicateRoute):
        client.request(Op.ADD_ROUTE, name="r", incoming="A", outgoing="B")
    with pytest.raises(UnknownPeripheral):
        client.request(Op.ADD_ROUTE, name="r2", incoming="A", outgoing="Z")
    assert [r["name"] for r in core.read_json("routes.cf")] == ["r"]


def _fire(instance, requests):
    """Send many requests without waiting between them; return the replies."""
    sock = instance.context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(instance.runtime.endpoints.state_front)
    try:
        for request in requests:
            sock.send_multipart([b"", encode(request)])
        replies = []
        while len(replies) < len(requests) and sock.poll(5000):
            replies.append(decode_as(sock.recv_multipart()[-1], Reply))
        return replies
    finally:
        sock.close()


def test_a_burst_of_changes_is_written_in_a_few_coalesced_writes(core):
    before = state_stats(core)["writes"]
    replies = _fire(core, [Request(op="register", args={"name": f"P{i}", "uuid": uid(i), "port": 100 + i}, req_id=f"b{i}") for i in range(200)])
    assert len(replies) == 200 and all(r.ok for r in replies)
    assert len(core.read_json("orch.cf")["peripherals"]) == 200
    writes = wait_until(lambda: (s := state_stats(core))["requests"] >= 200 and s["writes"], 5, message="stats")
    assert writes - before < 50


def test_garbage_requests_are_counted_and_answered_with_an_error(core):
    sock = core.context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(core.runtime.endpoints.state_front)
    sock.send_multipart([b"", b"\xc1garbage"])
    assert sock.poll(3000)
    reply = decode_as(sock.recv_multipart()[-1], Reply)
    sock.close()
    assert not reply.ok and "malformed" in reply.error
    assert core.state_client().request(Op.SNAPSHOT)["peripherals"] == []
    wait_until(lambda: state_stats(core)["dropped"] >= 1, 5, message="drop counter")


def test_repeated_request_id_is_applied_once(core):
    request = Request(op="add_route", args={}, req_id="same")
    client = core.state_client()
    client.request(Op.REGISTER, name="A", uuid=uid(1), port=1)
    client.request(Op.REGISTER, name="B", uuid=uid(2), port=2)
    request.args = {"name": "r", "incoming": "A", "outgoing": "B"}
    first, second = _fire(core, [request, request])
    assert first.ok and second.ok and second.result == first.result


def _replica_from_bus(instance, sub, client, replica, until):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if replica.needs_snapshot:
            replica.load_snapshot(client.request(Op.SNAPSHOT))
        if sub.poll(100):
            topic, message = parse_event(sub.recv_multipart())
            if isinstance(message, StateUpdate):
                replica.apply(message)
            elif isinstance(message, Heartbeat) and message.actor == "state":
                replica.check_heartbeat(message.stats["epoch"], message.stats["seq"])
        if until(replica):
            return replica
    raise AssertionError("replica never caught up")


def _wait_subscribed(client, subs, timeout=10.0):
    """A SUB socket's subscription takes effect a moment after connect: re-register a probe (a new port each time,
    so each is an update) until every subscriber has seen an update."""
    seen = [False] * len(subs)
    probes = iter(range(1, 1_000_000))

    def all_seen():
        client.request(Op.REGISTER, name="Probe", uuid=uid(999), port=next(probes))
        for i, sub in enumerate(subs):
            while sub.poll(50):
                _, message = parse_event(sub.recv_multipart())
                seen[i] = seen[i] or isinstance(message, StateUpdate)
        return all(seen)
    wait_until(all_seen, timeout, 0.0, "every subscriber to receive updates")


def test_snapshot_plus_updates_give_every_subscriber_the_same_state(core):
    client = core.state_client()
    subs = [connect_subscriber(core.context, core.runtime.endpoints, [Topic.STATE, Topic.HEARTBEAT]) for _ in range(2)]
    replicas = [StateReplica(), StateReplica()]
    _wait_subscribed(client, subs)
    replicas[0].load_snapshot(client.request(Op.SNAPSHOT))  # one starts early, the other joins late
    for i in range(20):
        client.request(Op.REGISTER, name=f"P{i}", uuid=uid(i), port=100 + i)
    for i in range(1, 20):
        client.request(Op.ADD_ROUTE, name=f"r{i}", incoming="P0", outgoing=f"P{i}")
    client.request(Op.REMOVE_ROUTE, name="r5")
    final = client.request(Op.SNAPSHOT)
    for sub, replica in zip(subs, replicas):
        _replica_from_bus(core, sub, client, replica, lambda r: r.seq >= final["seq"])
        assert sorted(replica.routes) == sorted(r["name"] for r in final["routes"])
        assert sorted(replica.peripherals) == sorted(p["uuid"] for p in final["peripherals"])
        sub.close()


def test_sigkill_during_writes_never_leaves_an_unparsable_file(tmp_path):
    instance = start_instance(tmp_path, only=["broker", "state"])
    try:
        acknowledged = set()
        for round_ in range(4):
            requests = [Request(op="register", args={"name": f"P{round_}_{i}", "uuid": uid(round_ * 1000 + i), "port": 1}, req_id=f"{round_}-{i}")
                        for i in range(150)]
            sock = instance.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(instance.runtime.endpoints.state_front)
            for request in requests:
                sock.send_multipart([b"", encode(request)])
            time.sleep(random.uniform(0.005, 0.05))  # not a wait: the kill lands at a random point of the burst
            while sock.poll(0):
                reply = decode_as(sock.recv_multipart()[-1], Reply)
                if reply.ok:
                    acknowledged.add(reply.result["uuid"])
            killed = instance.child_pid("state")
            os.kill(killed, signal.SIGKILL)
            sock.close()
            on_disk = {p["uuid"] for p in json.loads((instance.config_dir / "orch.cf").read_text())["peripherals"]}
            json.loads((instance.config_dir / "routes.cf").read_text())
            assert acknowledged <= on_disk
            wait_until(lambda: instance.child_pid("state") not in (None, killed), 10, message="a new state keeper")
            instance.wait_ready()
        assert not list(instance.config_dir.glob("*.corrupt-*"))
    finally:
        instance.stop()


def test_corrupt_files_at_start_are_kept_aside_and_the_system_runs(tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "routes.cf").write_text("[{broken")
    instance = start_instance(tmp_path, only=["broker", "state"])
    try:
        kept = list(config_dir.glob("routes.cf.corrupt-*"))
        assert len(kept) == 1 and kept[0].read_text() == "[{broken"
        assert instance.read_json("routes.cf") == []
        assert "kept aside" in (config_dir / "logs" / "state.log").read_text()
    finally:
        instance.stop()


def test_reset_clears_state_and_keeps_a_backup(core):
    client = core.state_client()
    client.request(Op.REGISTER, name="A", uuid=uid(1), port=1)
    result = client.request(Op.RESET)
    assert core.read_json("orch.cf")["peripherals"] == []
    backup = json.loads(open(os.path.join(result["backup"], "orch.cf")).read())
    assert [p["name"] for p in backup["peripherals"]] == ["A"]
    assert core.read_json("orch.cf")["command_port"] == core.command_port


def test_replica_feed_applies_updates_and_detects_a_missed_trailing_update():
    replica = StateReplica()
    replica.load_snapshot({"epoch": "e", "seq": 1, "config": {}, "peripherals": [], "routes": []})
    route = {"name": "r", "incoming": "a", "outgoing": "b"}
    assert replica.feed(StateUpdate(epoch="e", seq=2, kind="route", key="r", value=route))
    assert replica.feed(Heartbeat(actor="router-1", pid=1, host="h", started_at=0, stats={"epoch": "e", "seq": 9})) is False
    assert not replica.needs_snapshot  # only the keeper's heartbeat speaks for the state
    replica.feed(Heartbeat(actor="state", pid=1, host="h", started_at=0, stats={"epoch": "e", "seq": 3}))
    assert replica.needs_snapshot


def test_a_mere_sighting_does_not_rewrite_the_file_but_a_change_does_and_a_stop_keeps_it(tmp_path):
    """A sweep every 5 s sights every peripheral: rewriting orch.cf each time would wear a board's flash for a
    last_seen nobody reads from disk. A sighting that changes something (port, config, back online) is written at
    once; last_seen alone waits (replicas have it at once), and a stop writes it."""
    instance = start_instance(tmp_path, only=["broker", "state"])
    try:
        client = instance.state_client()
        client.request(Op.REGISTER, name="TTS_Engine", uuid=uid(1), port=26301)
        client.request(Op.SEEN, name="TTS_Engine", uuid=uid(1), port=26301, host="localhost")  # online: a change
        wait_until(lambda: instance.read_json("orch.cf")["peripherals"][0].get("online"), 5, 0.05, "online on disk")
        orch_cf = instance.config_dir / "orch.cf"
        written = orch_cf.stat().st_mtime_ns
        last_seen = instance.read_json("orch.cf")["peripherals"][0]["last_seen"]
        time.sleep(0.05)
        sighted = client.request(Op.SEEN, name="TTS_Engine", uuid=uid(1), port=26301, host="localhost")
        assert sighted["last_seen"] > last_seen  # the running state has it
        time.sleep(2.0)  # beyond the 1 s of a lazy write
        assert orch_cf.stat().st_mtime_ns == written
        client.request(Op.SEEN, name="TTS_Engine", uuid=uid(1), port=26301, host="localhost",
                       config={"voice": "low"})  # its /info changed: a change
        wait_until(lambda: instance.read_json("orch.cf")["peripherals"][0]["config"] == {"voice": "low"}, 3, 0.05,
                   "the changed config on disk")
        final = client.request(Op.SEEN, name="TTS_Engine", uuid=uid(1), port=26301, host="localhost")["last_seen"]
    finally:
        instance.stop()
    assert json.loads(orch_cf.read_text())["peripherals"][0]["last_seen"] == final
