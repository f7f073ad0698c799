"""Reply texts and the one way to build a reply: ``ok()``, ``error()``, ``forbidden()``, ``failure()``.

Each reply ends in exactly one newline (``/register`` answers ``/ack <port>\\n``); the legacy
sentences are kept verbatim (docs/protocol.md section 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...core.errors import ErrorCode, OrchestratorError

if TYPE_CHECKING:  # a forbidden reply names the peer; the registry builds replies, so no import at run time
    from .registry import Peer

UNKNOWN_COMMAND = "Unknown command. Type '/help' for available commands."
AUTH_OK = "Authenticated: admin commands allowed on this connection."
ROUTE_NOT_FOUND = "Route '{name}' not found."
# How error replies begin (the legacy sentences kept verbatim); launch.py ctl goes by each reply's code, not its text.
ERROR_PREFIX = "Error"
USAGE_PREFIX = "Usage:"
INVALID_PREFIX = "Invalid"


@dataclass(frozen=True)
class TextReply:
    """What a command answers: text (may be empty: no reply), an error code (0 = ok), and whether to hang up."""

    text: str
    code: int = 0
    close: bool = False
    grant_admin: bool = False  # /auth succeeded: this connection may run admin commands from now on
    tap: tuple[str, str] | None = None  # (kind, key): after this reply, stream live payloads to the client

    def wire(self) -> bytes:
        """The bytes written to the client: the text plus exactly one newline, or nothing."""
        if not self.text:
            return b""
        return (self.text.rstrip("\n") + "\n").encode("utf-8")


def ok(text: str = "", close: bool = False) -> TextReply:
    return TextReply(text=text, code=0, close=close)


def error(reason: str, code: ErrorCode = ErrorCode.BAD_ARGUMENTS, close: bool = False) -> TextReply:
    """An error reply; ``reason`` is the whole line (legacy sentences are kept verbatim)."""
    return TextReply(text=reason, code=int(code), close=close)


def forbidden(what: str, peer: "Peer") -> TextReply:
    """The refusal of an admin command from a client outside admin_clients that has not sent /auth."""
    return error(f"Error: {what} not allowed from {peer.host or 'this client'} (admin command: connect from an admin "
                 f"network or send /auth <token> first)", ErrorCode.FORBIDDEN)


def failure(exc: OrchestratorError) -> TextReply:
    """The one way a narrow exception becomes an answer line."""
    return error(f"{ERROR_PREFIX}: {exc}", exc.code)
