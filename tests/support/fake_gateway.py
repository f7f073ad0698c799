"""The gateway's collaborators, faked for unit tests: the state keeper behind a command context, the routers of
the data plane, and a clock that moves only when told."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from actors.core.protocol import DataBatch, Op, decode_as
from actors.core.replica import StateReplica
from actors.gateway.text.handlers import build_registry
from actors.gateway.text.registry import Peer
from actors.gateway.dataplane import DataPlane, FlowLimits, RouterBusy, RouterGone

UUID_A = "aaaaaaaa-0000-4000-8000-000000000001"
UUID_B = "bbbbbbbb-0000-4000-8000-000000000002"
CLOCK_START_S = 1000.0


class FakeContext:
    """A CommandContext whose state keeper is a dict of canned answers, recording every request."""

    def __init__(self, answers: dict[Op, Any] | None = None) -> None:
        self.replica = StateReplica()
        self.replica.load_snapshot({"epoch": "e", "seq": 0, "config": {"script_uuid": "u"}, "peripherals": [],
                                    "routes": []})
        self.answers = answers or {}
        self.requests: list[tuple[Op, dict[str, Any]]] = []

    def add_peripheral(self, name: str, uuid: str, port: int = 7000) -> None:
        self.replica.peripherals[uuid] = {"name": name, "uuid": uuid, "port": port, "last_seen": 0, "online": True}

    async def request(self, op: Op, **args: Any) -> Any:
        self.requests.append((op, args))
        answer = self.answers.get(op)
        if isinstance(answer, Exception):
            raise answer
        return answer(args) if callable(answer) else answer

    async def settle(self, done: Callable[[StateReplica], bool]) -> None:
        return None

    async def status(self) -> dict[str, Any]:
        return {"UUID": "u", "Routes": 0}


def run(line: str, ctx: FakeContext, peer: Peer = Peer()) -> str:
    """The reply text the command registry gives for one line."""
    return asyncio.run(build_registry().dispatch(line, ctx, peer)).text


class Clock:
    """A monotonic clock for the data plane that moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = CLOCK_START_S

    def __call__(self) -> float:
        return self.now


class FakeRouters:
    """The data plane's send function: records (router, DataBatch); routers in `busy` or `gone` refuse."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, DataBatch]] = []
        self.busy: set[bytes] = set()
        self.gone: set[bytes] = set()

    def __call__(self, router: bytes, body: bytes) -> None:
        if router in self.busy:
            raise RouterBusy()
        if router in self.gone:
            raise RouterGone()
        self.sent.append((router, decode_as(body, DataBatch)))

    def seqs(self, router: bytes | None = None) -> list[int]:
        """Every payload's sequence number sent (to `router`, or to any), in order."""
        return [seq for r, b in self.sent if router in (None, r) for seq in range(b.seq, b.seq + len(b.payloads))]


def make_plane(limits: FlowLimits | None = None) -> tuple[DataPlane, FakeRouters, Clock, list[tuple[str, bool]]]:
    """A data plane over fake routers and a fake clock; the list collects its (source, paused) calls."""
    routers, clock, pauses = FakeRouters(), Clock(), []
    plane = DataPlane(routers, clock, on_pause=lambda source, paused: pauses.append((source, paused)), limits=limits)
    return plane, routers, clock, pauses
