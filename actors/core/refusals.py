"""Rate-limited reporting of refusals: a flood of refused clients or requests gives a few log lines, not a flood."""
from __future__ import annotations

import time
from collections import OrderedDict

REFUSAL_REPORT_INTERVAL_S = 60.0  # at most one activity line per address and reason in this time
MAX_TRACKED_ADDRESSES = 1024  # the rate limiter forgets the oldest addresses beyond this (bounded memory)


class RefusalLog:
    """Decides which refusals get an activity line: one per address and reason per interval, bounded memory."""

    def __init__(self, interval_s: float = REFUSAL_REPORT_INTERVAL_S, capacity: int = MAX_TRACKED_ADDRESSES) -> None:
        self.interval_s = interval_s
        self.capacity = capacity
        self.last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.suppressed: dict[tuple[str, str], int] = {}

    def should_report(self, address: str, reason: str, now: float | None = None) -> int | None:
        """None to stay quiet; otherwise how many refusals were kept quiet since the last line."""
        now = time.monotonic() if now is None else now
        key = (address, reason)
        last = self.last.get(key)
        if last is not None and now - last < self.interval_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return None
        self.last[key] = now
        self.last.move_to_end(key)
        while len(self.last) > self.capacity:
            oldest, _ = self.last.popitem(last=False)
            self.suppressed.pop(oldest, None)
        return self.suppressed.pop(key, 0)
