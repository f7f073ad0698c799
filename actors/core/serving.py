"""Serving requests, written once: look up the op's handler, run it, turn a narrow exception into an error reply.

Used by the state keeper (its tables) and the supervisor (its control socket). Each actor keeps its
handlers in one table, with the activity line of a handler beside it (``Handler.activity``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import OrchestratorError, UnknownOp
from .protocol import Reply, Request

Args = dict[str, Any]


@dataclass(frozen=True)
class Handler:
    """What an op does, and the activity line a success gets (None: it logs nothing)."""

    run: Callable[[Request], Any]
    activity: Callable[[Args, Any], str] | None = None


def serve(request: Request, handlers: Mapping[str, Handler],
          on_refused: Callable[[str, OrchestratorError], None] | None = None,
          kind: str = "op") -> tuple[Reply, Handler | None, Any]:
    """The reply to request; also the handler that ran and its result (None when refused), for bookkeeping."""
    handler = handlers.get(request.op)
    try:
        if handler is None:
            raise UnknownOp(f"unknown {kind} {request.op!r}")
        result = handler.run(request)
    except OrchestratorError as exc:
        if on_refused is not None:
            on_refused(request.op, exc)
        return Reply(ok=False, error=str(exc), code=int(exc.code), req_id=request.req_id), None, None
    return Reply(ok=True, result=result, req_id=request.req_id), handler, result
