"""Acks to the gateway: a batch is acknowledged once it and every earlier batch of its source are settled.

``AckBook`` and ``BatchTracker`` are the pure bookkeeping; ``Acks`` settles chunks and sends the coalesced acks
through the send it is given (the router's data socket), so it runs and is tested without a router.
"""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..core.protocol import DataAck, encode
from .sinks import Chunk

Send = Callable[[bytes], Awaitable[object]]


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

    def __init__(self) -> None:
        self.book = AckBook()
        self.due: dict[tuple[str, str], int] = {}
        self.ready = asyncio.Event()
        self.sent = 0

    def chunk_done(self, chunk: Chunk) -> None:
        """Settle chunk once (delivered, dropped or parked); ack when its batch and every earlier one are settled."""
        if chunk.settled:
            return
        chunk.settled = True
        tracker: BatchTracker = chunk.token
        seq = self.book.chunk_done(tracker)
        if seq is not None:
            self.ack(tracker.stream, seq)

    def ack(self, stream: tuple[str, str], seq: int) -> None:
        """Coalesce: the sender sends the latest seq per (source, gateway epoch)."""
        self.due[stream] = seq
        self.ready.set()

    def outstanding(self) -> int:
        return self.book.outstanding()

    def _take(self) -> list[bytes]:
        due, self.due = self.due, {}
        return [encode(DataAck(source=source, seq=seq, epoch=epoch)) for (source, epoch), seq in due.items()]

    async def run(self, send: Send) -> None:
        """The ack sender: one wake-up per burst of settled chunks, one message per stream."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            for body in self._take():
                await send(body)
                self.sent += 1

    async def send_final(self, send: Send, timeout_s: float) -> None:
        """A graceful stop: send what is due, each ack bounded by timeout_s (raises asyncio.TimeoutError past it)."""
        for body in self._take():
            await asyncio.wait_for(send(body), timeout_s)
            self.sent += 1
