"""The activity feed: what an actor's log sends to the bus (the UI's activity log shows it)."""
from __future__ import annotations

import logging

from actors.core.bus import FILE_ONLY, ActivityHandler
from actors.core.protocol import Activity, decode_as


class CapturingSocket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        self.sent.append(frames)


def test_info_and_above_reach_the_feed_and_file_only_lines_do_not() -> None:
    sock = CapturingSocket()
    logger = logging.getLogger("test_activity.feed")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = ActivityHandler("router-1", sock)  # type: ignore[arg-type]
    logger.addHandler(handler)
    try:
        logger.debug("too detailed for the feed")
        logger.warning("sink %s is not keeping up", "Tts")
        logger.info("sink %s caught up; lost %d payloads", "Tts", 3, extra=FILE_ONLY)
    finally:
        logger.removeHandler(handler)
    texts = [decode_as(frames[1], Activity).text for frames in sock.sent]
    assert texts == ["sink Tts is not keeping up"], "one activity line per episode: its start"
