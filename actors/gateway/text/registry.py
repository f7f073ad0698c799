"""The command registry: each command's name, handler, admin flag, usage and help registered once,
so help, admin checks and the CLI's error detection are derived from it. Handlers reach the system
only through a ``CommandContext``, so they run against fakes in tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from ..access import AuthGuard
from ...core.net import effective_address
from ...core.errors import ErrorCode, OrchestratorError
from ...core.protocol import Op
from ...core.replica import StateReplica
from .replies import INVALID_PREFIX, UNKNOWN_COMMAND, USAGE_PREFIX, TextReply, error, failure, forbidden, ok

class CommandContext(Protocol):
    """What handlers may use: the replicated tables, requests to the state keeper, the status figures."""

    replica: StateReplica
    auth_guard: AuthGuard  # /auth failures per address: delays and lockouts

    async def request(self, op: Op, **args: Any) -> Any: ...

    async def settle(self, done: Callable[[StateReplica], bool]) -> None: ...

    async def status(self) -> dict[str, Any]: ...

    async def control(self, op: Op, **args: Any) -> Any: ...


@dataclass(frozen=True)
class Peer:
    """Who sent a command: its exact address (a peripheral belongs to the host that registered it) and its rights."""

    host: str = ""
    port: int = 0
    admin: bool = True  # in-process callers are trusted; a gateway connection sets this from its access policy
    local_host: str = ""  # our address the client reached (a client on one of our own addresses is this machine)

    @property
    def this_machine(self) -> bool:
        address = effective_address(self.host, self.local_host)
        return not self.host or (address is not None and address.is_loopback)

    def identity(self) -> dict[str, Any]:
        """What the state keeper needs to apply the ownership rule: the exact address and the admin right."""
        return {"host": self.host, "admin": self.admin}


Handler = Callable[[list[str], CommandContext, Peer], Awaitable[TextReply]]


@dataclass(frozen=True)
class Command:
    """One command: its words (``("/routes", "add")``), the usage line and summary shown by help, the handler."""

    words: tuple[str, ...]
    usage: str
    summary: str
    handler: Handler
    args: tuple[int, int] = (0, 0)  # min and max argument count after the words
    aliases: tuple[str, ...] = ()
    # arguments from this index on arrive as one string, spacing kept (free text like a rule)
    rest_from: int | None = None
    details: tuple[str, ...] = ()  # more lines for the group's help
    admin: bool = False  # changes or reveals more than a peripheral needs: only from admin_clients, or after /auth


@dataclass
class Registry:
    """Commands by their words; ``dispatch`` turns a line into a reply and narrow exceptions into error lines."""

    commands: dict[tuple[str, ...], Command] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # "/routes" -> its summary

    def add(self, command: Command) -> None:
        for words in (command.words, *((alias,) for alias in command.aliases)):
            self.commands[words] = command

    def add_group(self, word: str, summary: str) -> None:
        self.groups[word] = summary

    def find(self, tokens: list[str]) -> tuple[Command | None, list[str]]:
        """The command named by the first one or two tokens, and its arguments."""
        if len(tokens) >= 2 and (tokens[0], tokens[1]) in self.commands:
            return self.commands[(tokens[0], tokens[1])], tokens[2:]
        return self.commands.get((tokens[0],)), tokens[1:]

    async def dispatch(self, text: str, context: CommandContext, peer: Peer = Peer()) -> TextReply:
        """Answer one command line."""
        tokens = text.split()
        if not tokens:
            return ok()
        command, args = self.find(tokens)
        if command is None:
            return self._unknown(tokens)
        if command.admin and not peer.admin:
            return forbidden(" ".join(command.words), peer)
        low, high = command.args
        if not low <= len(args) <= high:
            return error(f"{USAGE_PREFIX} {command.usage}")
        if command.rest_from is not None and len(args) > command.rest_from:
            skip = len(tokens) - len(args) + command.rest_from
            args = args[:command.rest_from] + [text_after(text, skip)]
        try:
            return await command.handler(args, context, peer)
        except OrchestratorError as exc:
            return failure(exc)

    def _unknown(self, tokens: list[str]) -> TextReply:
        if tokens[0] in self.groups:
            if len(tokens) == 1:
                return error(f"{INVALID_PREFIX} {tokens[0][1:]} command. Type '{tokens[0]} help' for usage.")
            return error(f"Unknown {tokens[0][1:]} command. Type '{tokens[0]} help' for usage.")
        return error(UNKNOWN_COMMAND, ErrorCode.UNKNOWN_OP)

    def admin_commands(self) -> frozenset[tuple[str, ...]]:
        """The words of every command registered admin=True (the access tests walk them all)."""
        return frozenset(command.words for command in self.commands.values() if command.admin)

    def _unique(self) -> list[Command]:
        seen: list[Command] = []
        for command in self.commands.values():
            if command not in seen:
                seen.append(command)
        return seen

    def help_text(self) -> str:
        """The top-level command list (sub-commands appear under their group's own help)."""
        lines = ["Available commands:"]
        for command in self._unique():
            if len(command.words) == 1:
                names = " or ".join((command.words[0], *command.aliases))
                usage = command.usage.replace(command.words[0], names, 1)
                lines.append(f"{usage} - {command.summary}")
        for group, summary in self.groups.items():
            lines.append(f"{group} - {summary}")
            lines.append(f"    {group} help - Show {group[1:]} command help")
        return "\n".join(lines)

    def group_help(self, group: str) -> str:
        lines = [f"{group[1:].capitalize()} command usage:"]
        for command in self._unique():
            if len(command.words) == 2 and command.words[0] == group:
                lines.append(f"{command.usage} - {command.summary}")
                lines.extend(f"    {detail}" for detail in command.details)
        return "\n".join(lines)


def text_after(text: str, skip: int) -> str:
    """The text after the first ``skip`` whitespace-separated tokens, its inner spacing kept."""
    rest = text.strip()
    for _ in range(skip):
        parts = rest.split(None, 1)
        rest = parts[1] if len(parts) > 1 else ""
    return rest.strip()
