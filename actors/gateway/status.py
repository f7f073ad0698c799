"""The gateway's figures: its heartbeat counters and the /status reply built from every live actor's beat.

``StatusFigures`` is given the replica, a way to get every live actor's last beat (the supervisor keeps them: the
gateway does not wake for each beat on the bus), the gateway's own figures and its auth guard: it builds /status on
its own.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from ..core.durations import with_uptime
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

LiveBeats = Callable[[], Awaitable[dict[str, Heartbeat]]]  # actor -> its last beat, live actors only


class StatusFigures:
    """The /status figures (CommandContext.status): the gateway's own, joined with every live actor's heartbeat."""

    def __init__(self, replica: StateReplica, live_beats: LiveBeats, stats: Callable[[], dict[str, Any]],
                 auth_guard: AuthGuard) -> None:
        self.replica = replica
        self.live_beats = live_beats
        self.stats = stats  # the gateway's own heartbeat figures
        self.auth_guard = auth_guard
        self.started_at = time.time()

    async def status(self) -> dict[str, Any]:
        """CommandContext: the /status figures (the seed's example, with real counters)."""
        beats = await self.live_beats()
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
    """The launched peripherals (process state joined with registration) from the main supervisor's heartbeat, if any
    (a satellite's supervisor, heard first, must not stand in for it)."""
    main = beats.get("supervisor")
    rows = main.stats.get("peripherals") if main is not None else None
    if not isinstance(rows, list):
        return {}
    now = time.time()
    return {"Launched": [with_uptime(row, now) for row in rows if isinstance(row, dict)]}


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"
