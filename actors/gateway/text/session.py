"""One connection's lines turned into items: data (``/data`` or a data-port stream), a ``/config``
block, a command, or a bad line (docs/protocol.md sections 2 and 3).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import ErrorCode
from .replies import TextReply, error

CONFIG_END = "EOF"
DATA_COMMAND = b"/data"
COMMAND_PREFIX = "/"


@dataclass(frozen=True)
class DataLine:
    """One payload from ``source`` (raw bytes, no newline)."""

    source: str
    payload: bytes


@dataclass(frozen=True)
class CommandLine:
    text: str


@dataclass(frozen=True)
class ConfigBlock:
    """``/config <target>`` + JSON lines + ``EOF`` (or the connection closing): the collected JSON text."""

    target: str
    text: str
    ended_by_close: bool = False  # no EOF line: slm, sum and embed send the JSON and close (an extension accepts it)


@dataclass(frozen=True)
class BadLine:
    """A line that gets an error answer; ``close`` when the connection cannot go on."""

    reply: TextReply


Item = DataLine | CommandLine | ConfigBlock | BadLine


def invalid_utf8() -> BadLine:
    return BadLine(error("Error: invalid UTF-8 in line; it was dropped", ErrorCode.BAD_ARGUMENTS))


class LineSession:
    """What one connection has said so far: command lines, a data-port stream, or the inside of a /config block."""

    def __init__(self, data_port: bool, max_config_bytes: int) -> None:
        self.awaiting_first_line = data_port
        self.stream_source: str | None = None
        self.config_target: str | None = None
        self.config_lines: list[str] = []
        self.config_bytes = 0
        self.max_config_bytes = max_config_bytes

    def feed(self, raw: bytes) -> Item | None:
        """Classify one line (without its newline); None when it only changed the session."""
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if self.stream_source is not None:
            return self._payload(self.stream_source, raw)
        if raw.startswith(DATA_COMMAND + b" ") and self.config_target is None:
            self.awaiting_first_line = False
            return parse_data_command(raw)
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return invalid_utf8()
        if self.config_target is not None:
            return self._config_line(text)
        if not text:
            return None
        if self.awaiting_first_line:
            self.awaiting_first_line = False
            if not text.startswith(COMMAND_PREFIX):
                self.stream_source = text  # data-port protocol: first line is the uuid
                return None
        return self._command(text)

    @staticmethod
    def _payload(source: str, raw: bytes) -> Item | None:
        if not raw.strip():
            return None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return invalid_utf8()
        return DataLine(source, raw)

    def _command(self, text: str) -> Item:
        tokens = text.split()
        if tokens[0] == "/data":
            return BadLine(error("Invalid data command format."))
        if tokens[0] == "/config":
            if len(tokens) != 2:
                return BadLine(error("Usage: /config <uuid>, then the JSON lines, then a line EOF"))
            self.config_target, self.config_lines, self.config_bytes = tokens[1], [], 0
            return None
        return CommandLine(text)

    @property
    def in_config_block(self) -> bool:
        return self.config_target is not None

    def end(self, partial: bytes) -> Item | None:
        """The client closed: a /config block still open ends here (its JSON is checked when applied); None otherwise.

        ``partial`` is a last line without a newline: part of the block, not a dropped data line.
        """
        if self.config_target is None:
            return None
        if partial.strip():
            item = self.feed(partial)
            if item is not None:  # the partial line was the EOF line itself, or too long / not UTF-8
                return item
        block = ConfigBlock(self.config_target, "\n".join(self.config_lines), ended_by_close=True)
        self.config_target, self.config_lines = None, []
        return block

    def _config_line(self, text: str) -> Item | None:
        if text == CONFIG_END:
            block = ConfigBlock(self.config_target or "", "\n".join(self.config_lines))
            self.config_target, self.config_lines = None, []
            return block
        self.config_bytes += len(text) + 1
        if self.config_bytes > self.max_config_bytes:
            self.config_target, self.config_lines = None, []
            return BadLine(error(f"Error: /config block longer than {self.max_config_bytes} bytes",
                                 ErrorCode.BAD_ARGUMENTS, close=True))
        self.config_lines.append(text)
        return None


def parse_data_command(raw: bytes) -> Item:
    """``/data <uuid> <payload...>``: the payload is everything after the second space."""
    parts = raw.split(b" ", 2)
    if len(parts) < 3 or not parts[1] or not parts[2].strip():
        return BadLine(error("Invalid data command format."))
    try:
        source = parts[1].decode("utf-8")
        parts[2].decode("utf-8")
    except UnicodeDecodeError:
        return invalid_utf8()
    return DataLine(source, parts[2].rstrip())
