"""The long-running tasks of an asyncio actor, watched: one that dies ends the actor.

A bus reader, a data reader or a router watch that raised would otherwise leave the actor up with a
replica quietly going stale. Raising from the actor's main loop instead makes ``run_actor`` exit
non-zero, and the supervisor restarts the process with a fresh snapshot.
"""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine


class TaskEnded(RuntimeError):
    """A task meant to run until the actor stops returned on its own."""


class Supervised:
    """Starts the actor's forever-tasks; ``check()`` in the main loop re-raises the first one's death."""

    def __init__(self, wake: asyncio.Event) -> None:
        self.wake = wake  # the main loop's sleep: set when a task ends, so the death is seen at once
        self.tasks: list[asyncio.Task] = []

    def start(self, *coros: Coroutine[Any, Any, None]) -> list[asyncio.Task]:
        started = [asyncio.create_task(coro) for coro in coros]
        for task in started:
            task.add_done_callback(lambda _: self.wake.set())
        self.tasks += started
        return started

    def check(self) -> None:
        """Raise what a dead task raised (TaskEnded if it returned): the actor exits and is restarted."""
        for task in self.tasks:
            if not task.done() or task.cancelled():
                continue
            error = task.exception()
            if error is not None:
                raise error
            raise TaskEnded(f"task {task.get_coro().__qualname__} returned")

    async def cancel(self, *others: asyncio.Task) -> None:
        """Cancel every task (and others, e.g. short-lived ones) and wait for them to finish."""
        everything = [*self.tasks, *others]
        for task in everything:
            task.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
