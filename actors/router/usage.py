"""Route usage: per-route counters, reported to the state keeper at most once per USAGE_FLUSH_INTERVAL_S.

A mixin of ``Router``: it uses the router's request client, counters and wake event. No file, log line or
round trip per payload.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ..core.errors import OrchestratorError
from ..core.protocol import Op
from ..core.settings import USAGE_FLUSH_INTERVAL_S

log = logging.getLogger(__name__)

MIN_USAGE_INTERVAL_S = 0.1  # a usage report over a shorter window would overstate its rate
FINAL_FLUSH_TIMEOUT_S = 1.0


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


class UsageReports:
    """A report that fails is added back to the counters and goes with the next one."""

    def _usage(self, route: str) -> RouteUsage:
        usage = self.usage.get(route)
        if usage is None:
            if not self.usage:
                self.wake.set()  # the housekeeping loop starts the usage reports' timer
            usage = self.usage[route] = RouteUsage()
        return usage

    def _take_usage(self, interval_s: float) -> dict[str, dict[str, Any]]:
        """The counters to report (and reset): routes with traffic, or whose reported rate must fall to 0."""
        report: dict[str, dict[str, Any]] = {}
        for route, usage in list(self.usage.items()):
            if not usage.pending() and usage.reported_rate == 0:
                del self.usage[route]
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

    def _flush_usage(self, interval_s: float = USAGE_FLUSH_INTERVAL_S) -> None:
        """Report the usage counted over the last interval_s (the rate is per that interval)."""
        if self.usage_task is not None and not self.usage_task.done():
            return  # the last report is still in flight; its counters keep accumulating here
        report = self._take_usage(max(interval_s, MIN_USAGE_INTERVAL_S))
        if report:
            self.usage_task = asyncio.create_task(self._send_usage(report))

    async def _send_usage(self, report: dict[str, dict[str, Any]], timeout: float | None = None) -> None:
        try:
            await self.client.request(Op.ROUTE_USAGE, usage=report, **({"timeout": timeout} if timeout else {}))
            self.counters.usage_sent += 1
        except OrchestratorError as exc:
            log.warning("%s: route usage not recorded (%s); will send it with the next report", self.name, exc)
            for route, entry in report.items():
                usage = self._usage(route)
                usage.messages += entry["messages"]
                usage.bytes += entry["bytes"]
                usage.dropped += entry["dropped"]
                usage.filtered += entry["filtered"]
                usage.last_used = max(usage.last_used or 0, entry.get("last_used") or 0) or None

    async def _final_usage_flush(self) -> None:
        if self.usage_task is not None and not self.usage_task.done():
            self.usage_task.cancel()
        usage = self._take_usage(USAGE_FLUSH_INTERVAL_S)
        report = {route: entry for route, entry in usage.items()
                  if entry["messages"] or entry["dropped"] or entry["filtered"]}
        if report:
            await self._send_usage(report, FINAL_FLUSH_TIMEOUT_S)
