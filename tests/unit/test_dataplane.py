"""The gateway's data plane as pure logic against fake routers: resend after a router dies, flow control, pausing."""
from __future__ import annotations

import random

from actors.core.settings import HEARTBEAT_EXPIRY_S
from actors.core.protocol import DataBatch
from actors.gateway.dataplane import PENDING_LIMIT_PER_SOURCE, DataPlane, FlowLimits, rendezvous
from tests.support.fake_gateway import UUID_A, UUID_B, FakeRouters, make_plane

SOURCE = "00000000-0000-4000-8000-00000000000a"
SMALL = FlowLimits(window_messages=4, window_bytes=1 << 20, pending_messages=40, pending_bytes=1 << 20)


def test_batches_of_a_dead_router_go_to_the_next_one_first_in_order() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"r1", pid=1, host="h")
    plane.submit(SOURCE, [b"1", b"2"])
    plane.submit(SOURCE, [b"3"])
    plane.ack(SOURCE, 2)
    plane.lost(b"r1", "test")
    plane.heard(b"r2", pid=2, host="h")
    plane.submit(SOURCE, [b"4"])
    assert routers.seqs(b"r2") == [3, 4]
    assert plane.stats()["payloads_resent"] == 1 and plane.stats()["routers_lost"] == 1


def test_a_new_process_under_the_same_name_gets_what_the_old_one_did_not_ack() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"router-1", pid=10, host="h")
    plane.submit(SOURCE, [b"1"])
    plane.submit(SOURCE, [b"2"])
    assert plane.heard(b"router-1", pid=10, host="h") is False  # same process: nothing happens
    assert plane.heard(b"router-1", pid=11, host="h") is True  # restarted: a new incarnation
    assert routers.seqs(b"router-1") == [1, 2, 1, 2]
    assert plane.stats()["routers_restarted"] == 1


def test_a_dropped_connection_declares_its_router_dead_at_once() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"r1", pid=1, host="h", fd=7)
    plane.heard(b"r2", pid=2, host="h", fd=8)
    plane.lost(b"r2", "test")  # only r1 remains: the source goes there
    plane.submit(SOURCE, [b"1"])
    assert plane.disconnected(99) is None
    assert plane.disconnected(7) == b"r1" and plane.live() == []
    plane.heard(b"r1", pid=3, host="h", fd=9)
    assert routers.seqs(b"r1") == [1, 1]


def test_an_unreachable_router_is_dead_and_its_batches_move() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"r1")
    plane.submit(SOURCE, [b"1"])
    routers.gone.add(b"r1")
    plane.submit(SOURCE, [b"2"])
    assert plane.live() == [] and plane.stats()["pending"] == 1
    plane.heard(b"r2")
    assert [(r, s) for r, b in routers.sent for s in [b.seq]] == [(b"r1", 1), (b"r2", 1), (b"r2", 2)]


def test_silence_beyond_expiry_is_death_and_acks_do_not_revive() -> None:
    plane, routers, clock, _ = make_plane()
    plane.heard(b"r1")
    plane.submit(SOURCE, [b"1"])
    clock.now += HEARTBEAT_EXPIRY_S + 0.1
    plane.alive(b"r1")  # an ack from a router already past expiry is too late to keep it
    assert plane.expire() == [b"r1"]
    plane.alive(b"r1")
    assert plane.live() == []
    plane.heard(b"r1")
    assert routers.seqs() == [1, 1]


def test_late_acks_from_a_dead_router_still_release_batches() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"r1")
    plane.submit(SOURCE, [b"1", b"2"])
    plane.submit(SOURCE, [b"3"])
    plane.lost(b"r1", "test")
    plane.ack(SOURCE, 2)  # in flight when it died: delivered, so not sent again
    plane.heard(b"r2")
    assert routers.seqs(b"r2") == [3]


def test_window_bounds_unacknowledged_payloads_and_acks_open_it() -> None:
    plane, routers, _, _ = make_plane(SMALL)
    plane.heard(b"r1")
    plane.submit(SOURCE, [b"%d" % i for i in range(10)])
    assert routers.seqs() == [1, 2, 3, 4] and plane.stats()["pending"] == 6
    plane.ack(SOURCE, 3)  # a batch is released whole
    assert routers.seqs() == [1, 2, 3, 4]
    plane.ack(SOURCE, 4)
    assert routers.seqs() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert plane.stats()["unacked_payloads"] == 4 and plane.stats()["pending"] == 2


def test_a_source_beyond_its_bound_is_paused_then_resumed_without_loss() -> None:
    plane, routers, _, pauses = make_plane(SMALL)
    plane.heard(b"r1")
    pause_at = SMALL.pause_at()[0]
    plane.submit(SOURCE, [b"x"] * (SMALL.window_messages + pause_at))
    assert pauses == [(SOURCE, True)] and plane.paused(SOURCE) and plane.stats()["sources_paused"] == 1
    seq = SMALL.window_messages
    while plane.paused(SOURCE):
        plane.ack(SOURCE, seq)
        seq = routers.seqs()[-1]
    assert pauses == [(SOURCE, True), (SOURCE, False)]
    assert plane.stats()["dropped_buffer_full"] == 0 and plane.stats()["pause_episodes"] == 1


def test_without_any_router_the_pending_bound_is_the_last_resort() -> None:
    plane, routers, _, pauses = make_plane(SMALL)
    plane.submit(SOURCE, [b"x"] * (SMALL.pending_messages + 3))
    assert routers.sent == [] and plane.stats()["dropped_buffer_full"] == 3 and pauses == [(SOURCE, True)]
    plane.heard(b"r1")
    assert routers.seqs() == [1, 2, 3, 4]


def test_pending_bytes_bound_too() -> None:
    limits = FlowLimits(window_messages=100, window_bytes=10, pending_messages=100, pending_bytes=40)
    plane, routers, _, pauses = make_plane(limits)
    plane.heard(b"r1")
    plane.submit(SOURCE, [b"y" * 10])
    plane.submit(SOURCE, [b"z" * 10])  # window bytes full: held
    assert routers.seqs() == [1] and plane.paused(SOURCE) and pauses == [(SOURCE, True)]


class Fleet:
    """Fake router processes: each delivers what it received, in order, and acks; a killed one loses its inbox."""

    def __init__(self, plane: DataPlane, routers: FakeRouters, names: list[bytes]) -> None:
        self.plane, self.routers = plane, routers
        self.inbox: dict[bytes, list[DataBatch]] = {name: [] for name in names}
        self.pids = {name: 1 for name in names}
        self.seen = 0
        self.delivered: list[int] = []

    def collect(self) -> None:
        for router, batch in self.routers.sent[self.seen:]:
            self.inbox[router].append(batch)
        self.seen = len(self.routers.sent)

    def deliver(self, router: bytes) -> None:
        self.collect()
        if self.inbox[router]:
            batch = self.inbox[router].pop(0)
            self.delivered += range(batch.seq, batch.seq + len(batch.payloads))
            self.plane.ack(batch.source, batch.seq + len(batch.payloads) - 1)

    def kill(self, router: bytes, restart: bool) -> None:
        self.collect()
        self.inbox[router] = []
        self.pids[router] += 1
        if restart:
            self.plane.heard(router, pid=self.pids[router], host="h")
        else:
            self.plane.lost(router, "killed")


def test_random_deaths_never_lose_or_reorder_first_deliveries() -> None:
    rng = random.Random(7)
    plane, routers, _, _ = make_plane(SMALL)
    names = [b"r1", b"r2", b"r3"]
    fleet = Fleet(plane, routers, names)
    for name in names:
        plane.heard(name, pid=1, host="h")
    sent = 0
    for _ in range(5000):
        action = rng.random()
        if action < 0.35:
            count = rng.randint(1, 5)
            plane.submit(SOURCE, [b"%d" % (sent + i) for i in range(count)])
            sent += count
        elif action < 0.9:
            fleet.deliver(rng.choice(names))
        elif action < 0.95:
            fleet.kill(rng.choice(names), restart=rng.random() < 0.5)
        else:
            for name in names:
                if name not in plane.routers:
                    plane.heard(name, pid=fleet.pids[name], host="h")
    for name in names:
        if name not in plane.routers:
            plane.heard(name, pid=fleet.pids[name], host="h")
    for _ in range(10_000):
        plane.flush()
        for name in names:
            fleet.deliver(name)
    firsts = list(dict.fromkeys(fleet.delivered))
    assert firsts == list(range(1, len(firsts) + 1))  # first arrivals in order, no gap
    assert plane.stats()["unacked_payloads"] == 0 and plane.stats()["pending"] == 0
    assert len(firsts) == sent - plane.stats()["dropped_buffer_full"]
    assert plane.stats()["payloads_resent"] > 0 and plane.stats()["router_switches"] > 0


def test_an_ack_beyond_what_was_sent_is_ignored() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"r1")
    plane.submit(SOURCE, [b"1"])
    plane.ack(SOURCE, 500)  # meant for a gateway process that ran before this one
    assert plane.stats()["unacked_payloads"] == 1 and plane.stats()["payloads_acked"] == 0


def test_batches_carry_this_gateways_epoch_and_acks_for_another_are_ignored() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"r1", pid=1, host="h")
    plane.submit(SOURCE, [b"1", b"2", b"3"])
    assert routers.sent[0][1].epoch == plane.epoch
    plane.ack(SOURCE, 3, epoch="a-previous-gateway")
    assert plane.stats()["stale_acks"] == 1 and plane.stats()["unacked_payloads"] == 3
    plane.ack(SOURCE, 3, epoch=plane.epoch)
    assert plane.stats()["unacked_payloads"] == 0


# ---- numbering, draining, dead and busy routers -------------------------------------------
def test_payloads_are_numbered_per_source_from_one() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"router-1")
    plane.submit(UUID_A, [b"a", b"b"])
    plane.submit(UUID_A, [b"c"])
    plane.submit(UUID_B, [b"x"])
    batches = [(b.source, b.seq, b.payloads) for _, b in routers.sent]
    assert batches == [(UUID_A, 1, [b"a", b"b"]), (UUID_A, 3, [b"c"]), (UUID_B, 1, [b"x"])]


def test_without_routers_payloads_wait_bounded_then_flow_in_order() -> None:
    plane, routers, _, _ = make_plane()
    plane.submit(UUID_A, [b"%d" % i for i in range(PENDING_LIMIT_PER_SOURCE + 5)])
    assert routers.sent == [] and plane.stats()["dropped_buffer_full"] == 5
    plane.heard(b"router-1")
    while plane.stats()["pending"]:  # the flow window lets more go as the router acknowledges
        plane.ack(UUID_A, routers.sent[-1][1].seq + len(routers.sent[-1][1].payloads) - 1)
    payloads = [p for _, batch in routers.sent for p in batch.payloads]
    assert payloads == [b"%d" % i for i in range(PENDING_LIMIT_PER_SOURCE)]
    assert plane.stats()["pending"] == 0


def source_preferring(router: bytes, routers: list[bytes]) -> str:
    """A source uuid that rendezvous hashing sends to router when all of routers live."""
    candidates = (f"{i:08d}-0000-4000-8000-000000000000" for i in range(1000))
    return next(s for s in candidates if rendezvous(s, routers) == router)


def test_source_stays_on_its_router_until_drained_then_switches() -> None:
    plane, routers, _, _ = make_plane()
    source = source_preferring(b"r2", [b"r1", b"r2"])
    plane.heard(b"r1")
    plane.submit(source, [b"1"])
    plane.heard(b"r2")
    plane.submit(source, [b"2"])
    assert [r for r, _ in routers.sent] == [b"r1"]  # held while r1 has an unacked batch
    plane.ack(source, 1)
    assert [(r, b.seq) for r, b in routers.sent] == [(b"r1", 1), (b"r2", 2)]


def test_drain_times_out_when_the_old_router_never_acks() -> None:
    plane, routers, clock, _ = make_plane()
    source = source_preferring(b"r2", [b"r1", b"r2"])
    plane.heard(b"r1")
    plane.submit(source, [b"1"])
    plane.heard(b"r2")
    plane.submit(source, [b"2"])
    assert len(routers.sent) == 1
    clock.now += HEARTBEAT_EXPIRY_S / 2
    plane.heard(b"r1")
    plane.heard(b"r2")
    clock.now += HEARTBEAT_EXPIRY_S
    plane.heard(b"r1")
    plane.heard(b"r2")
    plane.flush()
    assert [(r, b.seq) for r, b in routers.sent] == [(b"r1", 1), (b"r2", 1), (b"r2", 2)]  # unacked batch goes along
    assert plane.stats()["forced_switches"] == 1


def test_dead_router_is_forgotten_and_its_sources_move() -> None:
    plane, routers, clock, _ = make_plane()
    plane.heard(b"r1")
    plane.submit(UUID_A, [b"1"])
    clock.now += HEARTBEAT_EXPIRY_S + 1
    assert plane.expire() == [b"r1"]
    plane.heard(b"r2")
    plane.submit(UUID_A, [b"2"])
    assert [(r, b.seq) for r, b in routers.sent] == [(b"r1", 1), (b"r2", 1), (b"r2", 2)]  # resent before the newer one
    assert plane.stats()["unacked_batches"] == 2


def test_busy_or_gone_router_holds_payloads() -> None:
    plane, routers, _, _ = make_plane()
    plane.heard(b"r1")
    routers.busy.add(b"r1")
    plane.submit(UUID_A, [b"1"])
    assert plane.stats()["pending"] == 1
    routers.busy.clear()
    plane.flush()
    assert [b.seq for _, b in routers.sent] == [1]
    routers.gone.add(b"r1")
    plane.submit(UUID_A, [b"2"])
    assert plane.live() == [] and plane.stats()["pending"] == 1


def test_acks_release_kept_batches() -> None:
    plane, _, _, _ = make_plane()
    plane.heard(b"r1")
    plane.submit(UUID_A, [b"1", b"2"])
    plane.submit(UUID_A, [b"3"])
    plane.ack(UUID_A, 2)
    assert plane.stats()["unacked_batches"] == 1 and plane.stats()["payloads_acked"] == 2
