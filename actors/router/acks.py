"""Acks to the gateway: a batch is acknowledged once it and every earlier batch of its source are settled.

``AckBook`` and ``BatchTracker`` are the pure bookkeeping; ``Acks`` is a mixin of ``Router`` that settles
chunks and sends the coalesced acks on its data socket.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

from ..core.protocol import DataAck, encode
from .sinks import Chunk


@dataclass(eq=False)
class BatchTracker:
    """One batch waiting for its chunks (one per matching route) to be delivered or dropped."""

    source: str
    last_seq: int
    pending: int
    done: bool = False
    epoch: str = ""  # the gateway that numbered the batch

    @property
    def stream(self) -> tuple[str, str]:
        """What acks are counted along: one source as numbered by one gateway process."""
        return self.source, self.epoch


class AckBook:
    """Per-source FIFO of batches: an ack covers a batch only when it and every earlier one are done."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], collections.deque[BatchTracker]] = {}

    def add(self, tracker: BatchTracker) -> int | None:
        """Track a new batch; returns a seq to ack at once if nothing was pending (no routes)."""
        queue = self.waiting.setdefault(tracker.stream, collections.deque())
        queue.append(tracker)
        return self.chunk_done(tracker) if tracker.pending <= 0 else None

    def chunk_done(self, tracker: BatchTracker) -> int | None:
        """One chunk of tracker finished; returns the highest seq now acknowledgeable for its source, if any."""
        tracker.pending -= 1
        if tracker.pending > 0:
            return None
        tracker.done = True
        queue = self.waiting.get(tracker.stream)
        last = None
        while queue and queue[0].done:
            last = queue.popleft().last_seq
        if queue is not None and not queue:
            del self.waiting[tracker.stream]
        return last

    def outstanding(self) -> int:
        return sum(len(q) for q in self.waiting.values())


class Acks:
    """Settle each chunk once; send the latest seq per (source, gateway epoch), never one ack per payload."""

    def _chunk_done(self, chunk: Chunk) -> None:
        """Settle chunk once (delivered, dropped or parked); ack when its batch and every earlier one are settled."""
        if chunk.settled:
            return
        chunk.settled = True
        tracker: BatchTracker = chunk.token
        seq = self.acks.chunk_done(tracker)
        if seq is not None:
            self._ack(tracker.stream, seq)

    def _ack(self, stream: tuple[str, str], seq: int) -> None:
        """Coalesce: the ack sender sends the latest seq per (source, gateway epoch)."""
        self.ack_due[stream] = seq
        self.ack_ready.set()

    async def _send_acks(self) -> None:
        assert self.dealer is not None
        while True:
            await self.ack_ready.wait()
            self.ack_ready.clear()
            due, self.ack_due = self.ack_due, {}
            for (source, epoch), seq in due.items():
                await self.dealer.send(encode(DataAck(source=source, seq=seq, epoch=epoch)))
                self.counters.acks += 1
