"""The peripherals' watchdog: when the supervisor dies, even by SIGKILL, no peripheral process is left behind.

The supervisor starts this small process with a pipe on its stdin and writes ``+<pgid>`` when it
starts a peripheral's process group and ``-<pgid>`` when that group is gone. The pipe reaches end
of file only when the supervisor closes it or dies; then every group still listed gets SIGTERM and,
WATCHDOG_GRACE_S later, SIGKILL. A peripheral that leaves its process group (setsid) escapes this.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from ..core.settings import WATCHDOG_GRACE_S

GROUP_POLL_S = 0.05


def signal_groups(groups: set[int], signum: int) -> set[int]:
    """Send signum to each group; returns the groups that still existed."""
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, signum)
            alive.add(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def end_groups(groups: set[int], grace_s: float = WATCHDOG_GRACE_S) -> None:
    """SIGTERM every group, then SIGKILL the ones still there after grace_s."""
    alive = signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        time.sleep(GROUP_POLL_S)
        alive = signal_groups(alive, 0)
    signal_groups(alive, signal.SIGKILL)


def follow(stream) -> set[int]:  # noqa: ANN001 - a binary file
    """Keep the set of live groups from the supervisor's lines until end of file."""
    groups: set[int] = set()
    for raw in stream:
        line = raw.strip()
        if len(line) < 2 or line[:1] not in (b"+", b"-") or not line[1:].isdigit():
            continue
        pgid = int(line[1:])
        if pgid <= 1:
            continue
        if line[:1] == b"+":
            groups.add(pgid)
        else:
            groups.discard(pgid)
    return groups


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the supervisor; it stops the peripherals itself
    end_groups(follow(sys.stdin.buffer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
