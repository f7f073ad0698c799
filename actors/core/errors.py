"""Numbered errors shared by the state keeper, the supervisor and the gateway's replies."""
from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    UNKNOWN_OP = 1
    BAD_ARGUMENTS = 2
    UNKNOWN_PERIPHERAL = 3
    UNKNOWN_ROUTE = 4
    DUPLICATE_ROUTE = 5
    NO_FREE_DATA_PORT = 6
    BAD_CONFIG = 7
    UNAVAILABLE = 8
    FORBIDDEN = 9
    INTERNAL = 10
    NOT_OWNER = 11  # a peripheral registered from another host: only an admin may act for it
    LIMIT_REACHED = 12  # a configured limit (peripherals per host, config size or depth) refuses the request


class OrchestratorError(Exception):
    """An error with a code that travels back to whoever asked."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadArguments(OrchestratorError):
    code = ErrorCode.BAD_ARGUMENTS


class UnknownOp(OrchestratorError):
    code = ErrorCode.UNKNOWN_OP


class UnknownPeripheral(OrchestratorError):
    code = ErrorCode.UNKNOWN_PERIPHERAL


class UnknownRoute(OrchestratorError):
    code = ErrorCode.UNKNOWN_ROUTE


class DuplicateRoute(OrchestratorError):
    code = ErrorCode.DUPLICATE_ROUTE


class NoFreeDataPort(OrchestratorError):
    code = ErrorCode.NO_FREE_DATA_PORT


class Unavailable(OrchestratorError):
    """The state keeper (or supervisor) did not answer in time."""

    code = ErrorCode.UNAVAILABLE


class Forbidden(OrchestratorError):
    code = ErrorCode.FORBIDDEN


class NotOwner(OrchestratorError):
    """A client acted for a peripheral another host registered, without admin rights."""

    code = ErrorCode.NOT_OWNER


class LimitReached(OrchestratorError):
    """A request would pass a configured limit; the message names the orch.cf key."""

    code = ErrorCode.LIMIT_REACHED


_BY_CODE = {cls.code: cls for cls in (BadArguments, UnknownOp, UnknownPeripheral, UnknownRoute, DuplicateRoute,
                                      NoFreeDataPort, Unavailable, Forbidden, NotOwner, LimitReached)}


def error_from_code(code: int, message: str) -> OrchestratorError:
    """Rebuild the narrow exception on the caller's side of a reply."""
    try:
        cls = _BY_CODE.get(ErrorCode(code), OrchestratorError)
    except ValueError:
        cls = OrchestratorError
    return cls(message) if cls is not OrchestratorError else OrchestratorError(message)
