"""Durations as people read them in a list: one formatter for the UI and launch.py, and uptimes from start times."""
from __future__ import annotations

import math
from typing import Any

SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400


def short_duration(seconds: Any) -> str | None:
    """'45s', '3m12s', '2h05m', '3d04h': an uptime in the few characters a list has room for.

    None for anything that is not a finite, non-negative number (a row comes from a heartbeat: never trusted).
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return None
    total = int(seconds)
    days, rest = divmod(total, SECONDS_PER_DAY)
    hours, rest = divmod(rest, SECONDS_PER_HOUR)
    minutes, secs = divmod(rest, SECONDS_PER_MINUTE)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def with_uptime(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A launched program's row as its supervisor's beat carries it (``started_at``, wall clock: fixed while it
    runs, so the beat stays unchanged) with ``uptime_s`` at now; rows come from the bus and are never trusted."""
    started = row.get("started_at")
    if isinstance(started, bool) or not isinstance(started, (int, float)) or not math.isfinite(started):
        return {**row, "uptime_s": None}
    return {**row, "uptime_s": round(max(0.0, now - started), 1)}
