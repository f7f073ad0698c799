"""A local copy of the state keeper's tables: snapshot plus numbered updates (the Clone pattern).

Pure data structure, no sockets: the actor that owns it feeds it updates from the bus and
snapshots from the keeper, and asks ``needs_snapshot`` after each feed.
"""
from __future__ import annotations

from typing import Any

from .protocol import Heartbeat, Message, StateUpdate, UpdateKind

KEEPER_ACTOR = "state"  # the heartbeat that carries the keeper's (epoch, seq)


class StateReplica:
    """peripherals by uuid, routes by name, config; consistent with the keeper's (epoch, seq)."""

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.seq = -1
        self.config: dict[str, Any] = {}
        self.peripherals: dict[str, dict[str, Any]] = {}
        self.routes: dict[str, dict[str, Any]] = {}
        self.needs_snapshot = True
        self._early: list[StateUpdate] = []
        self.resyncs = 0

    @property
    def ready(self) -> bool:
        return self.epoch is not None and not self.needs_snapshot

    def load_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Replace everything with a snapshot, then replay updates that arrived after it was taken."""
        self.epoch = snapshot["epoch"]
        self.seq = snapshot["seq"]
        self.config = dict(snapshot["config"])
        self.peripherals = {p["uuid"]: p for p in snapshot["peripherals"]}
        self.routes = {r["name"]: r for r in snapshot["routes"]}
        self.needs_snapshot = False
        early, self._early = self._early, []
        for update in early:
            self.apply(update)

    def apply(self, update: StateUpdate) -> bool:
        """Apply one update; returns True when the tables changed. Sets needs_snapshot on a gap."""
        if self.needs_snapshot:
            self._early.append(update)
            return False
        if update.epoch != self.epoch or update.seq > self.seq + 1:
            self.lost_sync()
            self._early.append(update)
            return False
        if update.seq <= self.seq:
            return False
        self.seq = update.seq
        self._change(update)
        return True

    def feed(self, message: Message) -> bool:
        """Take any bus event: updates are applied, the keeper's heartbeat checked; True when the tables changed."""
        if isinstance(message, StateUpdate):
            return self.apply(message)
        if isinstance(message, Heartbeat) and message.actor == KEEPER_ACTOR:
            epoch, seq = message.stats.get("epoch"), message.stats.get("seq")
            if isinstance(epoch, str) and isinstance(seq, int) and not isinstance(seq, bool):
                self.check_heartbeat(epoch, seq)
        return False

    def check_heartbeat(self, epoch: str, seq: int) -> None:
        """The keeper's heartbeat tells its latest seq: a trailing lost update shows up here."""
        if self.needs_snapshot:
            return
        if epoch != self.epoch or seq > self.seq:
            self.lost_sync()

    def lost_sync(self) -> None:
        """Out of step: the tables wait for a fresh snapshot; updates held so far are useless."""
        self.needs_snapshot = True
        self.resyncs += 1
        self._early = []

    def _change(self, update: StateUpdate) -> None:
        kind = update.kind
        if kind == UpdateKind.PERIPHERAL.value:
            self._set(self.peripherals, update.key, update.value)
        elif kind == UpdateKind.ROUTE.value:
            self._set(self.routes, update.key, update.value)
        elif kind == UpdateKind.CONFIG.value:
            self.config = dict(update.value or {})
        elif kind == UpdateKind.RESET.value:
            self.peripherals.clear()
            self.routes.clear()
            self.config = dict(update.value or {})

    @staticmethod
    def _set(table: dict[str, Any], key: str, value: Any) -> None:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value

    def peripheral_by_name(self, name: str) -> dict[str, Any] | None:
        for peripheral in self.peripherals.values():
            if peripheral["name"] == name:
                return peripheral
        return None
