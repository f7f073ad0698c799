"""Short fault injection (bench/faults.py): SIGKILL a router and the state keeper under a modest steady load."""
from __future__ import annotations

from pathlib import Path

from bench.faults import print_table, run_faults

RATE = 400  # messages/s in total over two routes (one per-message sink, one stream sink)
PHASE_S = 2.0
RESUME_LIMIT_MS = 2000


def test_router_and_state_keeper_kills_lose_nothing_and_keep_order(tmp_path: Path) -> None:
    rows = run_faults(RATE, PHASE_S, routers=1, victims=["router-1", "state"], with_supervisor=False, folder=tmp_path)
    print_table(rows)
    for row in rows:
        assert row.sent > 0 and row.note == "", row
        assert (row.lost, row.out_of_order) == (0, 0), row
        assert row.files_ok, row
        assert row.resume_ms is not None and row.resume_ms < RESUME_LIMIT_MS, row
