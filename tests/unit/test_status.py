"""/status built from the beats the supervisor keeps: the main board's supervisor speaks for the robot."""
from __future__ import annotations

import time

from actors.core.protocol import Heartbeat, decode_as, encode
from actors.gateway.status import launched_entry, system_health
from actors.supervisor.lastbeats import LastBeats


def beat(actor: str, expiry_s: float = 10.0, **stats: object) -> Heartbeat:
    return Heartbeat(actor=actor, pid=1, host="h", started_at=0.0, stats=dict(stats), expiry_s=expiry_s)


def test_a_satellites_supervisor_heard_first_never_stands_in_for_the_main_one() -> None:
    main_rows = [{"name": "tts", "state": "running"}]
    beats = {"supervisor@pi": beat("supervisor@pi", peripherals=[], health="degraded"),
             "supervisor": beat("supervisor", peripherals=main_rows, health="ready")}
    assert launched_entry(beats) == {"Launched": [{"name": "tts", "state": "running", "uptime_s": None}]}
    assert system_health(beats) == {"Health": "ready"}
    assert launched_entry({"supervisor@pi": beat("supervisor@pi", peripherals=main_rows)}) == {}


def test_last_beats_keeps_each_actors_latest_and_forgets_the_silent() -> None:
    book = LastBeats()
    old, new = beat("router-1", expiry_s=3.0, delivered=1), beat("router-1", expiry_s=3.0, delivered=2)
    book.note(old, encode(old), now=100.0)
    book.note(new, encode(new), now=101.0)
    book.note(beat("scanner", expiry_s=3.0), encode(beat("scanner", expiry_s=3.0)), now=99.0)
    live = [decode_as(encoded, Heartbeat) for encoded in book.live(now=103.5)]
    assert [(b.actor, b.stats) for b in live] == [("router-1", {"delivered": 2})]
    assert book.live(now=104.5) == [] and book.heard == {}


def test_launched_rows_beat_their_start_and_status_shows_the_uptime_now() -> None:
    """A row's start time does not change while the program runs, so the supervisor's beat stays unchanged (no beat
    every 1.5 s for a moving uptime); /status works the uptime out when asked."""
    started = time.time() - 125.0
    rows = [{"name": "llm", "state": "running", "started_at": started}, {"name": "tts", "state": "backoff",
                                                                         "started_at": None}]
    launched = launched_entry({"supervisor": beat("supervisor", peripherals=rows)})["Launched"]
    assert 125.0 <= launched[0]["uptime_s"] < 130.0 and launched[1]["uptime_s"] is None
