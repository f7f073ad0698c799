"""The gateway's figures: its heartbeat counters and the /status reply built from every live actor's beat.

``StatusFigures`` is given the replica, the heartbeats the gateway heard (and when), the gateway's own figures and
its auth guard: it builds /status on its own.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from ..core.bus import beat_expiry
from ..core.protocol import Heartbeat
from ..core.replica import StateReplica
from .access import AuthGuard
from .text.handlers import format_time

# The gateway's own figures /status shows, in this order.
GATEWAY_FIGURES = ("lines_in", "payloads_in", "unknown_source", "no_route", "dropped_buffer_full", "pending",
                   "unacked_payloads", "payloads_resent", "sources_paused", "pause_episodes", "routers_lost",
                   "bad_lines", "too_long", "partial_lines_dropped", "connections_open", "connections_refused",
                   "connections_refused_per_address", "idle_timeouts", "handler_errors", "auth_failures",
                   "auth_lockouts", "refused_identity")


class StatusFigures:
    """The /status figures (CommandContext.status): the gateway's own, joined with every live actor's heartbeat."""

    def __init__(self, replica: StateReplica, heartbeats: dict[str, Heartbeat], heard_at: dict[str, float],
                 stats: Callable[[], dict[str, Any]], auth_guard: AuthGuard) -> None:
        self.replica = replica
        self.heartbeats = heartbeats  # actor -> its last beat, as the gateway hears them
        self.heard_at = heard_at  # actor -> time.monotonic() of that beat
        self.stats = stats  # the gateway's own heartbeat figures
        self.auth_guard = auth_guard
        self.started_at = time.time()

    def _live_beats(self) -> dict[str, Heartbeat]:
        now = time.monotonic()
        return {actor: beat for actor, beat in self.heartbeats.items()
                if now - self.heard_at[actor] <= beat_expiry(beat)}

    def status(self) -> dict[str, Any]:
        """CommandContext: the /status figures (the seed's example, with real counters)."""
        beats = self._live_beats()
        started = min([self.started_at, *(beat.started_at for beat in beats.values())])
        routes = self.replica.routes.values()
        routed = sum(int(r.get("messages") or 0) for r in routes)
        dropped = sum(int(r.get("dropped") or 0) for r in routes)
        router_beats = [b for a, b in beats.items() if a.startswith("router")]
        routed = max(routed, sum(int(b.stats.get("delivered") or 0) for b in router_beats))
        dropped = max(dropped, sum(int(b.stats.get("dropped") or 0) for b in router_beats))
        scans = [b.stats.get("last_scan") for a, b in beats.items() if a.startswith("scanner")]
        last_scan = max((s for s in scans if isinstance(s, (int, float))), default=None)
        peripherals = self.replica.peripherals.values()
        stats = self.stats()
        return {
            "UUID": self.replica.config.get("script_uuid", ""),
            "Uptime": format_duration(time.time() - started),
            "Uptime Seconds": round(time.time() - started, 1),
            "Peripherals": {"online": sum(1 for p in peripherals if p.get("online")),
                            "total": len(self.replica.peripherals)},
            "Routes": len(self.replica.routes),
            "Routers Alive": stats["routers_live"],
            **system_health(beats),
            "Messages Routed": routed,
            "Messages Dropped": dropped + stats["unknown_source"] + stats["no_route"] + stats["dropped_buffer_full"],
            "Gateway": {k: stats[k] for k in GATEWAY_FIGURES},
            "Auth Locked": self.auth_guard.locked(),
            "Last Scan": format_time(last_scan),
            "Actors": [actor_entry(beat) for _, beat in sorted(beats.items())],
            **launched_entry(beats),
        }


def system_health(beats: dict[str, Heartbeat]) -> dict[str, Any]:
    """"Health" and, when degraded, its reasons, as the live supervisor works them out (absent when none heard)."""
    main = beats.get("supervisor")  # the main board's; satellites' supervisors carry their own suffix
    if main is None or not main.stats.get("health"):
        return {}
    health = {"Health": main.stats["health"]}
    if main.stats.get("reasons"):
        health["Degraded Because"] = list(main.stats["reasons"])
    return health


def actor_entry(beat: Heartbeat) -> dict[str, Any]:
    """One live actor in /status: where it runs (a satellite shows its own host), for routers what it delivered."""
    entry: dict[str, Any] = {"name": beat.actor, "host": beat.host, "pid": beat.pid}
    if beat.actor.startswith("router"):
        entry["delivered"] = int(beat.stats.get("delivered") or 0)
    return entry


def launched_entry(beats: dict[str, Heartbeat]) -> dict[str, Any]:
    """The launched peripherals (process state joined with registration) from the supervisor's heartbeat, if any."""
    rows = next((b.stats.get("peripherals") for a, b in beats.items() if a.startswith("supervisor")), None)
    return {"Launched": rows} if isinstance(rows, list) else {}


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"
