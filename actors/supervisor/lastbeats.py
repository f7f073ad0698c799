"""Every actor's last heartbeat, kept by the supervisor for the gateway's /status.

The supervisor hears every beat anyway (liveness); the gateway asks for them when /status is asked
(``Op.CONTROL_BEATS``) instead of waking for each beat on the bus, which is most of an idle system's work.
Beats are kept as they came off the bus, so the gateway checks them with the one decoder.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.bus import beat_expiry
from ..core.protocol import Heartbeat


@dataclass
class _Heard:
    encoded: bytes
    at: float  # time.time() when it arrived
    expiry_s: float


class LastBeats:
    """actor -> its last beat; an actor silent past its beat's expiry is forgotten (/status shows live actors)."""

    def __init__(self) -> None:
        self.heard: dict[str, _Heard] = {}

    def note(self, beat: Heartbeat, encoded: bytes, now: float) -> None:
        self.heard[beat.actor] = _Heard(encoded, now, beat_expiry(beat))

    def live(self, now: float) -> list[bytes]:
        """The encoded beats of the actors heard within their expiry, forgetting the others."""
        for actor in [a for a, h in self.heard.items() if now - h.at > h.expiry_s]:
            del self.heard[actor]
        return [h.encoded for h in self.heard.values()]
