"""Route usage: per-route counters, reported to the state keeper at most once per USAGE_FLUSH_INTERVAL_S.

``Usage`` is given the request to the keeper and a wake-up for the router's timer, nothing else: it runs and is
tested on its own. No file, log line or round trip per payload.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..core.errors import OrchestratorError
from ..core.protocol import Op
from ..core.settings import USAGE_FLUSH_INTERVAL_S

log = logging.getLogger(__name__)

MIN_USAGE_INTERVAL_S = 0.1  # a usage report over a shorter window would overstate its rate
FINAL_FLUSH_TIMEOUT_S = 1.0

Request = Callable[..., Awaitable[Any]]


@dataclass
class RouteUsage:
    """Counters of one route since the last flush to the state keeper."""

    messages: int = 0
    bytes: int = 0
    dropped: int = 0
    filtered: int = 0
    last_used: float | None = None
    reported_rate: float = 0.0

    def pending(self) -> bool:
        return bool(self.messages or self.dropped or self.filtered)


class Usage:
    """Per-route counters; a report that fails is added back to the counters and goes with the next one."""

    def __init__(self, request: Request, on_first: Callable[[], None], name: str = "router") -> None:
        self.request = request  # request(Op, **args) to the state keeper
        self.on_first = on_first  # the first route counted since the last report: the flush timer starts
        self.name = name
        self.routes: dict[str, RouteUsage] = {}
        self.task: asyncio.Task | None = None
        self.sent = 0

    def of(self, route: str) -> RouteUsage:
        """The route's counters (created on its first use)."""
        usage = self.routes.get(route)
        if usage is None:
            if not self.routes:
                self.on_first()
            usage = self.routes[route] = RouteUsage()
        return usage

    def take(self, interval_s: float) -> dict[str, dict[str, Any]]:
        """The counters to report (and reset): routes with traffic, or whose reported rate must fall to 0."""
        report: dict[str, dict[str, Any]] = {}
        for route, usage in list(self.routes.items()):
            if not usage.pending() and usage.reported_rate == 0:
                del self.routes[route]
                continue
            rate = round(usage.messages / interval_s, 1)
            entry: dict[str, Any] = {"messages": usage.messages, "bytes": usage.bytes, "dropped": usage.dropped,
                                     "filtered": usage.filtered, "rate": rate}
            if usage.last_used is not None:
                entry["last_used"] = usage.last_used
            report[route] = entry
            usage.messages = usage.bytes = usage.dropped = usage.filtered = 0
            usage.last_used = None
            usage.reported_rate = rate
        return report

    def flush(self, interval_s: float = USAGE_FLUSH_INTERVAL_S) -> None:
        """Report the usage counted over the last interval_s (the rate is per that interval)."""
        if self.task is not None and not self.task.done():
            return  # the last report is still in flight; its counters keep accumulating here
        report = self.take(max(interval_s, MIN_USAGE_INTERVAL_S))
        if report:
            self.task = asyncio.create_task(self.send(report))

    async def send(self, report: dict[str, dict[str, Any]], timeout: float | None = None) -> None:
        try:
            await self.request(Op.ROUTE_USAGE, usage=report, **({"timeout": timeout} if timeout else {}))
            self.sent += 1
        except OrchestratorError as exc:
            log.warning("%s: route usage not recorded (%s); will send it with the next report", self.name, exc)
            self._add_back(report)

    def _add_back(self, report: dict[str, dict[str, Any]]) -> None:
        for route, entry in report.items():
            usage = self.of(route)
            usage.messages += entry["messages"]
            usage.bytes += entry["bytes"]
            usage.dropped += entry["dropped"]
            usage.filtered += entry["filtered"]
            usage.last_used = max(usage.last_used or 0, entry.get("last_used") or 0) or None

    async def final_flush(self) -> None:
        """On a stop: what was counted since the last report, bounded by FINAL_FLUSH_TIMEOUT_S."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        report = {route: entry for route, entry in self.take(USAGE_FLUSH_INTERVAL_S).items()
                  if entry["messages"] or entry["dropped"] or entry["filtered"]}
        if report:
            await self.send(report, FINAL_FLUSH_TIMEOUT_S)
