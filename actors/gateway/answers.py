"""Answering command lines: one reply per command or /config block, from the command port or over the bus.

``Answers`` is given the command registry, the CommandContext its handlers use, ``Admission`` (refusals are
counted there), the gateway's counters and the refusal log, and where data lines go (``ingest``).
"""
from __future__ import annotations

import logging
from typing import Callable

from ..core.errors import ErrorCode, OrchestratorError
from ..core.refusals import RefusalLog
from .admission import Admission
from .text.handlers import apply_config_block
from .text.registry import CommandContext, Peer, Registry
from .text.replies import TextReply, error, failure
from .text.session import BadLine, CommandLine, ConfigBlock, DataLine, LineSession

log = logging.getLogger(__name__)

TAP_OVER_BUS = ("Error: /tap streams live payloads on a TCP connection to the command port; "
                "it cannot run through launch.py ctl")
FAILURE_TEXT_SHOWN = 200  # characters of an unforeseen exception's text in its log line


class Answers:
    """Every command line gets one reply; input nobody foresaw costs one error line, counted and logged rate-limited."""

    def __init__(self, registry: Registry, context: CommandContext, admission: Admission, counters: dict[str, int],
                 refusals: RefusalLog, ingest: Callable[[str, list[bytes]], None],
                 max_line_bytes: Callable[[], int]) -> None:
        self.registry = registry
        self.context = context
        self.admission = admission
        self.counters = counters
        self.refusals = refusals
        self.ingest = ingest  # data lines sent with commands (launch.py ctl): to the routers
        self.max_line_bytes = max_line_bytes  # the config's, as it is now

    async def answer(self, item: CommandLine | ConfigBlock, peer: Peer) -> TextReply:
        """Host: the reply to one command line or /config block."""
        self.counters["commands"] += 1
        try:
            if isinstance(item, ConfigBlock):
                reply = await apply_config_block(item, self.context, peer)
            else:
                reply = await self.registry.dispatch(item.text, self.context, peer)
        except OrchestratorError as exc:
            return failure(exc)
        except Exception as exc:  # noqa: BLE001 - the one catch-all of the command path: unforeseen input costs a line
            return self.handler_failed(exc, peer)
        if reply.code == ErrorCode.NOT_OWNER:
            self.admission.refused_identity(peer.host, reply.text)
        elif reply.code == ErrorCode.FORBIDDEN:
            command, _ = self.registry.find(item.text.split()) if isinstance(item, CommandLine) else (None, [])
            self.admission.refused_command(command, peer)
        return reply

    def handler_failed(self, exc: Exception, peer: Peer) -> TextReply:
        """Host: a handler raised what nobody foresaw (a bug, or input deeper or bigger than a library takes)."""
        self.counters["handler_errors"] += 1
        reason = type(exc).__name__
        quiet = self.refusals.should_report(peer.host, f"error:{reason}")
        log.debug("a command from %s failed", peer.host, exc_info=exc)  # the traceback, with --log-level DEBUG
        if quiet is not None:
            log.error("a command from %s failed with %s: %s; answered with an error%s", peer.host, reason,
                      str(exc)[:FAILURE_TEXT_SHOWN], f" ({quiet} more since the last report)" if quiet else "")
        return error(f"Error: command failed ({reason}); it was not applied", ErrorCode.INTERNAL)

    async def run_lines(self, text: str, peer: Peer) -> tuple[str, bool]:
        """What the command port would write back for these lines (commands, /config blocks), minus streaming;
        and whether any of them failed (a reply with an error code: launch.py ctl exits 1 on it)."""
        session = LineSession(data_port=False, max_config_bytes=self.max_line_bytes())
        out: list[bytes] = []
        failed = False
        for raw in text.encode("utf-8", "replace").split(b"\n"):
            item = session.feed(raw)
            if item is None:
                continue
            if isinstance(item, DataLine):
                self.ingest(item.source, [item.payload])
                continue
            reply = item.reply if isinstance(item, BadLine) else await self.answer(item, peer)
            if reply.tap is not None:
                reply = error(TAP_OVER_BUS)
            out.append(reply.wire())
            failed = failed or reply.code != 0
            if reply.close:
                break
        return b"".join(out).decode("utf-8", "replace"), failed
