"""What the UI knows of the system, built only from the bus.

A replica of the state keeper's tables (snapshot, then updates, through ``core.follower``), the recent
ACTIVITY lines (a bounded deque) and the actors' HEARTBEATs (who is alive, their counters). It never
reads the config files and never blocks: a dead bus costs no waits.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import zmq

from ..core.bus import beat_expiry, connect_subscriber, parse_event
from ..core.errors import OrchestratorError
from ..core.follower import SyncReplicaFollower
from ..core.protocol import Activity, Heartbeat, Op, ProtocolError, StateUpdate, Topic
from ..core.requests import RequestClient
from ..core.settings import HEARTBEAT_EXPIRY_S, HEARTBEAT_INTERVAL_S, Runtime
from . import viewmodel as vm

log = logging.getLogger(__name__)

ACTIVITY_KEEP = 2000  # lines of recent activity kept in memory (scrollable)
MAX_EVENTS_PER_DRAIN = 5000  # bounded, so a flood of events cannot starve the keyboard
SNAPSHOT_TIMEOUT_S = HEARTBEAT_INTERVAL_S
SNAPSHOT_RETRY_S = HEARTBEAT_INTERVAL_S
ACTOR_FORGET_S = HEARTBEAT_EXPIRY_S * 20  # an actor silent this long leaves the status line for good


class BusView:
    """Replica + activity + actor heartbeats, fed only by events and the state keeper's snapshot."""

    def __init__(self, runtime: Runtime, context: zmq.Context, own_name: str) -> None:
        self.own_name = own_name
        # Updates, the keeper's beat and activity wake the UI (the follower's sockets); the other actors' beats
        # (self.beats) only refresh figures the next repaint shows, so they are read then, not woken for.
        # A snapshot is asked without waiting, again only while the bus is alive: a dead one costs no waits.
        self.follower = SyncReplicaFollower(context, runtime.endpoints, (Topic.ACTIVITY,), on_event=self._on_event,
                                            may_retry=self.connected, retry_s=SNAPSHOT_RETRY_S,
                                            max_events=MAX_EVENTS_PER_DRAIN)
        self.replica = self.follower.replica
        self.beats = connect_subscriber(context, runtime.endpoints, (Topic.HEARTBEAT,))
        self.control = RequestClient(context, runtime.endpoints.control, runtime.endpoints.keys_dir)
        self.activity: deque[vm.ActivityLine] = deque(maxlen=ACTIVITY_KEEP)
        self.actors: dict[str, vm.ActorStatus] = {}
        self.started = time.monotonic()
        self.last_beat: float | None = None
        self.last_beat_expiry = HEARTBEAT_EXPIRY_S
        self.events = 0
        self.unknown = 0  # well-formed events of a kind the UI does not show

    @property
    def snapshots(self) -> int:
        return self.follower.snapshots

    @property
    def dropped(self) -> int:
        return self.follower.dropped + self.unknown

    def close(self) -> None:
        self.control.close()
        self.follower.close()
        self.beats.close()

    def connected(self) -> bool:
        """Someone other than us beat within the expiry that beat announced: the bus is alive."""
        return self.last_beat is not None and time.monotonic() - self.last_beat < self.last_beat_expiry

    def drain(self) -> bool:
        """Read every waiting event (bounded per source, so a flood cannot starve the keyboard); True when something on
        screen changed."""
        changed = self.follower.drain_events()
        for _ in range(MAX_EVENTS_PER_DRAIN):
            try:
                frames = self.beats.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                _, message = parse_event(frames)
            except ProtocolError:
                self.follower.core.dropped += 1
                continue
            changed |= self._on_event(message)
        return changed

    def _on_event(self, message: object) -> bool:
        """The follower's event hook (the replica has taken updates already), and the other actors' beats."""
        self.events += 1
        if isinstance(message, StateUpdate):
            return False
        if isinstance(message, Activity):
            self.activity.append(vm.ActivityLine(message.ts, message.actor, message.level, message.text))
            return True
        if isinstance(message, Heartbeat):
            return self._on_heartbeat(message)
        self.unknown += 1
        return False

    def _on_heartbeat(self, beat: Heartbeat) -> bool:
        """Record the actor (the state keeper's beat has told the replica whether it missed an update)."""
        if beat.actor == self.own_name:
            return False
        now = time.monotonic()
        known = self.actors.get(beat.actor)
        self.actors[beat.actor] = vm.ActorStatus(beat.actor, now, beat.started_at, beat.pid, beat.stats, beat.host,
                                                 beat_expiry(beat))
        was_silent = not self.connected()
        self.last_beat, self.last_beat_expiry = now, beat_expiry(beat)
        self._forget_silent(now)
        return was_silent or known is None or known.pid != beat.pid

    def _forget_silent(self, now: float) -> None:
        for name in [n for n, a in self.actors.items() if now - a.last_beat > ACTOR_FORGET_S]:
            del self.actors[name]

    def maybe_snapshot(self) -> bool:
        """Take a snapshot that arrived, ask (never waiting) when one is due; True when one loaded."""
        if not self.follower.maybe_snapshot():
            return False
        if self.snapshots == 1:
            self._load_history()
        return True

    def _load_history(self) -> None:
        """Activity from before we attached, kept by the supervisor; merged in time order, without repeats."""
        try:
            result = self.control.request(Op.CONTROL_ACTIVITY, timeout=SNAPSHOT_TIMEOUT_S)
        except OrchestratorError as exc:
            log.debug("no activity history: %s", exc)
            return
        seen = {(line.ts, line.actor, line.text) for line in self.activity}
        older = [vm.ActivityLine(e["ts"], e["actor"], e["level"], e["text"]) for e in result.get("activity", [])
                 if isinstance(e, dict) and (e.get("ts"), e.get("actor"), e.get("text")) not in seen]
        merged = sorted([*older, *self.activity], key=lambda line: line.ts)
        self.activity = deque(merged[-ACTIVITY_KEEP:], maxlen=ACTIVITY_KEEP)

    def model(self) -> vm.Model:
        now_mono = time.monotonic()
        return vm.Model(
            script_uuid=str(self.replica.config.get("script_uuid", "")),
            peripherals=list(self.replica.peripherals.values()),
            routes=list(self.replica.routes.values()),
            activity=self.activity,
            actors=self.actors,
            connected=self.connected(),
            ever_connected=self.last_beat is not None,
            silent_for_s=now_mono - (self.last_beat if self.last_beat is not None else self.started),
            now=time.time(),
            now_mono=now_mono,
            alive_within_s=HEARTBEAT_EXPIRY_S,
        )

    def stats(self) -> dict[str, Any]:
        return {"events": self.events, "dropped": self.dropped, "snapshots": self.snapshots,
                "connected": self.connected(),
                "peripherals": len(self.replica.peripherals), "routes": len(self.replica.routes)}
