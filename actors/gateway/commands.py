"""The legacy text protocol (docs/protocol.md sections 2 and 3) in one place: line parsing and the command registry.

A ``LineSession`` turns the raw lines of one TCP connection into items: data (``/data`` or a
data-port stream), a ``/config`` block, a command, or a bad line. A ``Registry`` of small
command handlers answers the commands; its help text is generated from the registry, so it
cannot drift from what is implemented. Replies are plain text built only by ``ok()`` and
``error()``; each ends in exactly one newline (``/register`` answers ``/ack <port>\\n``).
Handlers reach the system only through a ``CommandContext``, so they run against fakes in tests.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from .access import AuthGuard, token_matches
from ..core.net import effective_address
from ..core.errors import DuplicateRoute, ErrorCode, OrchestratorError, UnknownPeripheral, UnknownRoute
from ..core.protocol import TAP_PERIPHERAL, TAP_ROUTE, Op
from ..core.replica import StateReplica
from ..core.rules import RULE_KEYS, SYNTAX, RuleError, check_rule
from ..core.settings import MAX_AGE_KEY, ConfigError, parse_port
from ..core.records import check_peripheral_config
from ..core.records import BY_PORT_MARKER

UNKNOWN_COMMAND = "Unknown command. Type '/help' for available commands."
CONFIG_END = "EOF"
DATA_COMMAND = b"/data"
COMMAND_PREFIX = "/"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
AUTH_OK = "Authenticated: admin commands allowed on this connection."
ROUTE_NOT_FOUND = "Route '{name}' not found."
# How error replies begin (the legacy sentences kept verbatim); launch.py ctl goes by each reply's code, not its text.
ERROR_PREFIX = "Error"
USAGE_PREFIX = "Usage:"
INVALID_PREFIX = "Invalid"
CLEAR_RULES = "clear"
LAUNCH_USAGE = "/launch start|stop|restart|list [<name>]"


# ---- replies ------------------------------------------------------------------------
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


# ---- line parsing -------------------------------------------------------------------
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


# ---- the command registry -----------------------------------------------------------
class CommandContext(Protocol):
    """What handlers may use: the replicated tables, requests to the state keeper, the status figures."""

    replica: StateReplica
    auth_guard: AuthGuard  # /auth failures per address: delays and lockouts

    async def request(self, op: Op, **args: Any) -> Any: ...

    async def settle(self, done: Callable[[StateReplica], bool]) -> None: ...

    def status(self) -> dict[str, Any]: ...

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


# ---- formatting ---------------------------------------------------------------------
def format_time(stamp: float | None) -> str:
    if not stamp:
        return "Never"
    return time.strftime(TIME_FORMAT, time.localtime(stamp))


def peripheral_name(replica: StateReplica, uuid: str) -> str:
    record = replica.peripherals.get(uuid)
    return record["name"] if record else "Unknown"


def by_port(replica: StateReplica, uuid: str) -> str:
    """The marker of a route end no peripheral has: it works from the route's own port, as in the original."""
    return "" if uuid in replica.peripherals else f" {BY_PORT_MARKER}"


def route_end(replica: StateReplica, uuid: str, port: Any) -> str:
    """One end of a route in /routes info: peripheral name, uuid, the route's port, and the by-port marker."""
    return f"{peripheral_name(replica, uuid)} (UUID: {uuid}, Port: {port}){by_port(replica, uuid)}"


def list_peripherals(replica: StateReplica) -> str:
    """The original's /list text, plus an online marker at the end of each line."""
    if not replica.peripherals:
        return "No peripherals discovered."
    lines = ["Known peripherals:"]
    for index, p in enumerate(replica.peripherals.values(), start=1):
        state = "online" if p.get("online") else "offline"
        seen = format_time(p.get("last_seen"))
        lines.append(f"{index}. {p['name']} (UUID: {p['uuid']}, Port: {p['port']}, Last Seen: {seen}) {state}")
    return "\n".join(lines)


def list_routes(replica: StateReplica) -> str:
    """The original's /routes info text, plus each route's counters and rate."""
    if not replica.routes:
        return "No routes configured."
    lines = ["Configured routes:"]
    for route in replica.routes.values():
        lines += [
            f"Route Name: {route['name']}",
            f"  From: {route_end(replica, route['incoming'], route['incoming_port'])}",
            f"  To: {route_end(replica, route['outgoing'], route['outgoing_port'])}",
            f"  Last Used: {format_time(route.get('last_used'))}",
            f"  Messages: {route.get('messages', 0)}, Bytes: {route.get('bytes', 0)}, "
            f"Dropped: {route.get('dropped', 0)}, Rate: {float(route.get('rate') or 0.0):.1f} msg/s",
        ]
        lines += route_rule_lines(route)
    return "\n".join(lines)


def route_rule_lines(route: dict[str, Any]) -> list[str]:
    """A route's rules and how many payloads they held back; nothing for a plain route that never filtered."""
    lines = [f"  {key.capitalize()}: {route[key]}" for key in RULE_KEYS if route.get(key)]
    if lines or route.get("filtered"):
        lines.append(f"  Filtered: {route.get('filtered', 0)}")
    return lines


# ---- handlers -----------------------------------------------------------------------
async def cmd_connection_only(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    """/data and /config are parsed by LineSession; reaching here means a caller without a connection sent them."""
    return error("Error: /data and /config are only accepted on a gateway connection")


async def cmd_list(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    return ok(list_peripherals(ctx.replica))


async def cmd_status(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    return ok(json.dumps({**ctx.status(), "Routes Losing": route_losses(ctx.replica)}, indent=4))


def route_losses(replica: StateReplica) -> dict[str, int]:
    """Payloads each route lost (beyond its sink's queue bound or too old), for routes that lost some."""
    return {route["name"]: int(route.get("dropped") or 0) for route in replica.routes.values() if route.get("dropped")}


async def cmd_register(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    """``/register <name> <uuid> <port>`` -> ``/ack <data_port>``; the ack is the first thing written."""
    if len(args) != 3:
        return error("Invalid register command format.")
    name, uuid, port_text = args
    try:
        port = parse_port(port_text)
    except ConfigError as exc:  # the legacy sentence for text that is no number at all
        return error(f"Error: {exc}" if port_text.isascii() and port_text.isdigit() else "Port must be an integer.")
    record = await ctx.request(Op.REGISTER, name=name, uuid=uuid, port=port, this_machine=peer.this_machine,
                               **peer.identity())
    await ctx.settle(lambda replica: uuid in replica.peripherals)
    return ok(f"/ack {record['data_port']}")


async def cmd_auth(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    """``/auth <token>``: admin rights for the rest of this connection.

    Guessing is slowed three ways: a wrong token closes the connection, is answered only after a
    delay that grows with each recent failure from that address, and enough failures lock the
    address out (while locked, even the right token is refused).
    """
    token = ctx.replica.config.get("admin_token")
    if not isinstance(token, str) or not token:
        return error("Error: /auth is off (no admin_token is set)", ErrorCode.FORBIDDEN)
    who = peer.host or "this client"
    locked_s = ctx.auth_guard.locked_for(peer.host)
    if locked_s:
        return error(f"Error: /auth from {who} locked for {locked_s:.0f}s after repeated wrong tokens; "
                     "closing connection", ErrorCode.FORBIDDEN, close=True)
    if not token_matches(args[0], token):
        await asyncio.sleep(ctx.auth_guard.failed(peer.host))
        return error(f"Error: wrong token from {who}; closing connection", ErrorCode.FORBIDDEN, close=True)
    return TextReply(AUTH_OK, grant_admin=True)


async def cmd_reset(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    result = await ctx.request(Op.RESET)
    await ctx.settle(lambda replica: not replica.peripherals and not replica.routes)
    return ok("Configuration files reset and peripherals list cleared "
              f"(previous files backed up in {result.get('backup')}).")


async def cmd_exit(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    """Plain ``/exit`` ends this session; ``/exit <uuid>`` marks that peripheral offline."""
    if not args:
        return ok("Exiting command mode.", close=True)
    record = await ctx.request(Op.LOST, uuid=args[0], **peer.identity())
    return ok(f"{record['name']} marked offline.")


async def cmd_delivery(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    """How a sink receives data and, optionally, how old (seconds) its data may get before it is dropped unspoken."""
    name, mode, *max_age = args
    extra = {MAX_AGE_KEY: max_age[0]} if max_age else {}
    record = await ctx.request(Op.SET_DELIVERY, peripheral=name, mode=mode, **extra)
    wanted = {"delivery": mode, MAX_AGE_KEY: record.get(MAX_AGE_KEY)}
    await ctx.settle(lambda replica: {k: replica.peripherals.get(record["uuid"], {}).get(k) for k in wanted} == wanted)
    age = f", max_age {record[MAX_AGE_KEY]:g}s" if max_age else ""
    return ok(f"Delivery for '{record['name']}' set to {mode}{age}.")


async def cmd_remove(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    try:
        result = await ctx.request(Op.REMOVE_PERIPHERAL, name=args[0])
    except UnknownPeripheral:
        return error(f"Peripheral '{args[0]}' not found.", ErrorCode.UNKNOWN_PERIPHERAL)
    uuid = result["peripheral"]["uuid"]
    await ctx.settle(lambda replica: uuid not in replica.peripherals)
    removed = ", ".join(result["removed_routes"]) or "none"
    return ok(f"Peripheral '{args[0]}' removed (routes removed: {removed}).")


def _check_names(replica: StateReplica, incoming: str, outgoing: str) -> TextReply | None:
    """The original's wording when a route names a peripheral that does not exist."""
    if replica.peripheral_by_name(incoming) is None:
        return error(f"Incoming peripheral '{incoming}' not found.", ErrorCode.UNKNOWN_PERIPHERAL)
    if replica.peripheral_by_name(outgoing) is None:
        return error(f"Outgoing peripheral '{outgoing}' not found.", ErrorCode.UNKNOWN_PERIPHERAL)
    return None


async def cmd_routes_add(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    name, incoming, outgoing = args
    problem = _check_names(ctx.replica, incoming, outgoing)
    if problem is not None:
        return problem
    try:
        await ctx.request(Op.ADD_ROUTE, name=name, incoming=incoming, outgoing=outgoing)
    except DuplicateRoute:
        return error(f"Route '{name}' already exists.", ErrorCode.DUPLICATE_ROUTE)
    await ctx.settle(lambda replica: name in replica.routes)
    return ok(f"Route '{name}' added successfully.")


async def cmd_routes_edit(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    name, incoming, outgoing = args
    problem = _check_names(ctx.replica, incoming, outgoing)
    if problem is not None:
        return problem
    try:
        route = await ctx.request(Op.EDIT_ROUTE, name=name, incoming=incoming, outgoing=outgoing)
    except UnknownRoute:
        return error(ROUTE_NOT_FOUND.format(name=name), ErrorCode.UNKNOWN_ROUTE)
    await ctx.settle(lambda replica: replica.routes.get(name, {}).get("outgoing") == route["outgoing"]
                     and replica.routes[name].get("incoming") == route["incoming"])
    return ok(f"Route '{name}' updated successfully.")


async def cmd_routes_remove(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    name = args[0]
    try:
        await ctx.request(Op.REMOVE_ROUTE, name=name)
    except UnknownRoute:
        return error(ROUTE_NOT_FOUND.format(name=name), ErrorCode.UNKNOWN_ROUTE)
    await ctx.settle(lambda replica: name not in replica.routes)
    return ok(f"Route '{name}' removed successfully.")


ROUTES_SET_USAGE = f"/routes set <route-name> {' <rule> | '.join(RULE_KEYS)} <rule> | {CLEAR_RULES}"
ROUTES_SET_DETAILS = (
    *(f"{key}: {'  or  '.join(SYNTAX[key])}" for key in RULE_KEYS),
    "the rule is the rest of the line; a bad rule is refused here, never at delivery",
)


async def cmd_routes_set(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    """Set a route's filter or transform, or clear both; the rule is checked now, so delivery never meets a bad one."""
    name, key = args[0], args[1]
    rule = args[2] if len(args) > 2 else ""
    if key == CLEAR_RULES and not rule:
        request: dict[str, Any] = {"key": CLEAR_RULES}
        done: Callable[[dict[str, Any]], bool] = lambda route: not any(route.get(k) for k in RULE_KEYS)
    elif key in RULE_KEYS and rule:
        try:
            check_rule(key, rule)
        except RuleError as exc:
            return error(f"Error: invalid {key} for route '{name}': {exc}")
        request = {"key": key, "rule": rule}
        done = lambda route: route.get(key) == rule
    else:
        return error(f"{USAGE_PREFIX} {ROUTES_SET_USAGE}")
    try:
        await ctx.request(Op.SET_ROUTE_RULE, name=name, **request)
    except UnknownRoute:
        return error(ROUTE_NOT_FOUND.format(name=name), ErrorCode.UNKNOWN_ROUTE)
    await ctx.settle(lambda replica: name in replica.routes and done(replica.routes[name]))
    return ok(f"Route '{name}' rules cleared." if key == CLEAR_RULES else f"Route '{name}' {key} set: {rule}")


async def cmd_tap(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    """``/tap <route>|<peripheral>``: after the reply line, the live payloads, one per line, until the client closes."""
    target = args[0]
    if target in ctx.replica.routes:
        kind, key = TAP_ROUTE, target
    elif (peripheral := ctx.replica.peripheral_by_name(target)) is not None:
        kind, key = TAP_PERIPHERAL, peripheral["uuid"]
    else:
        return error(f"Error: no route or peripheral named {target!r}", ErrorCode.UNKNOWN_ROUTE)
    return TextReply(text=f"Tapping {kind} '{target}': live payloads follow; close the connection to stop.",
                     tap=(kind, key))


async def cmd_launch(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    """/launch start|stop|restart|list [<name>]: the peripherals the supervisor launched from peripherals.toml."""
    from ..supervisor.peripheralcli import PERIPHERAL_ACTIONS, peripheral_lines  # here: only this command needs it
    if args[0] not in PERIPHERAL_ACTIONS:
        return error(f"Usage: {LAUNCH_USAGE}")
    result = await ctx.control(Op.CONTROL_PERIPHERAL, action=args[0], name=args[1] if len(args) > 1 else None)
    if args[0] != "list":
        return ok("\n".join(result.get("done") or []))
    rows = peripheral_lines(result.get("peripherals") or [])
    problems = [f"  WARNING: {problem}" for problem in result.get("problems") or []]
    if not rows and not problems:
        return ok("No launched peripherals.")
    return ok("\n".join(["Launched peripherals:", *rows, *problems]))


async def cmd_routes_info(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
    return ok(list_routes(ctx.replica))


async def apply_config_block(block: ConfigBlock, ctx: CommandContext, peer: Peer = Peer()) -> TextReply:
    """Store a /config block's JSON object as that peripheral's config (own host or admin; size and depth limited)."""
    try:
        value = json.loads(block.text)
    except json.JSONDecodeError as exc:
        unended = " (the block ended by the connection closing, without an EOF line)" if block.ended_by_close else ""
        return error(f"Error: config for {block.target} is not valid JSON{unended}: {exc}")
    except RecursionError:
        return error(f"Error: config for {block.target} is nested too deep", ErrorCode.LIMIT_REACHED)
    if not isinstance(value, dict):
        return error(f"Error: config for {block.target} must be a JSON object")
    try:
        # here too: a deep value must not reach msgpack or the keeper
        check_peripheral_config(value, ctx.replica.config)
        record = await ctx.request(Op.SET_PERIPHERAL_CONFIG, uuid=block.target, config=value, **peer.identity())
    except OrchestratorError as exc:
        return failure(exc)
    return ok(f"Config stored for {record['name']}.")


def build_registry() -> Registry:
    """Every command of docs/protocol.md section 2 and the new ones, in help order."""
    registry = Registry()

    async def cmd_help(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
        return ok(registry.help_text())

    async def cmd_routes_help(args: list[str], ctx: CommandContext, peer: Peer) -> TextReply:
        return ok(registry.group_help("/routes"))

    registry.add(Command(("/help",), "/help", "Show this help message", cmd_help))
    registry.add(Command(("/list",), "/list", "List known peripherals", cmd_list, aliases=("/available",)))
    registry.add(Command(("/status",), "/status", "Show system status (JSON)", cmd_status))
    registry.add(Command(("/register",), "/register <name> <uuid> <port>",
                         "Register a peripheral; answers /ack <data_port>",
                         cmd_register, (0, 8)))
    registry.add(Command(("/data",), "/data <uuid> <payload>", "Send a payload from a peripheral along its routes",
                         cmd_connection_only, (0, 1 << 20)))
    registry.add(Command(("/config",), "/config <uuid>",
                         "Then JSON lines and a line EOF (or close): store that peripheral's config",
                         cmd_connection_only, (0, 1)))
    registry.add(Command(("/delivery",), "/delivery <peripheral-name> message|stream [max_age]",
                         "Set how a sink receives data, and how many seconds its data may wait before it is dropped",
                         cmd_delivery, (2, 3),
                         admin=True))
    registry.add(Command(("/remove",), "/remove <peripheral-name>", "Forget a peripheral and its routes", cmd_remove,
                         (1, 1), admin=True))
    registry.add(Command(("/tap",), "/tap <route-name>|<peripheral-name>",
                         "Watch the live payloads of a route or a peripheral",
                         cmd_tap, (1, 1), admin=True))
    registry.add(Command(("/auth",), "/auth <token>", "Allow admin commands on this connection (needs admin_token)",
                         cmd_auth, (1, 1)))
    registry.add(Command(("/launch",), LAUNCH_USAGE, "Start, stop, restart or list the peripherals of peripherals.toml",
                         cmd_launch, (1, 2), admin=True))
    registry.add(Command(("/reset",), "/reset",
                         "Reset the orchestrator: clear peripherals and routes (files are backed up)", cmd_reset,
                         admin=True))
    registry.add(Command(("/exit",), "/exit [<uuid>]", "Exit command mode, or mark a peripheral offline", cmd_exit,
                         (0, 1)))
    registry.add_group("/routes", "Manage routes")
    registry.add(Command(("/routes", "add"),
                         "/routes add <route-name> <incoming-peripheral-name> <outgoing-peripheral-name>",
                         "Add a new route", cmd_routes_add, (3, 3), admin=True))
    registry.add(Command(("/routes", "edit"),
                         "/routes edit <route-name> <incoming-peripheral-name> <outgoing-peripheral-name>",
                         "Change an existing route's ends", cmd_routes_edit, (3, 3), admin=True))
    registry.add(Command(("/routes", "remove"), "/routes remove <route-name>", "Remove an existing route",
                         cmd_routes_remove, (1, 1),
                         admin=True))
    registry.add(Command(("/routes", "set"), ROUTES_SET_USAGE, "Set a route's filter or transform rule, or clear both",
                         cmd_routes_set, (2, 1 << 16), rest_from=2, details=ROUTES_SET_DETAILS, admin=True))
    registry.add(Command(("/routes", "info"), "/routes info", "List all routes with counters, rate and rules",
                         cmd_routes_info))
    registry.add(Command(("/routes", "help"), "/routes help", "Show this help message", cmd_routes_help))
    return registry

