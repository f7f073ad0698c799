"""The commands themselves: one small handler each, the text formatting they share, and
``build_registry()``, which registers them all.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

from ..access import token_matches
from ...core.errors import DuplicateRoute, ErrorCode, OrchestratorError, UnknownPeripheral, UnknownRoute
from ...core.protocol import TAP_PERIPHERAL, TAP_ROUTE, Op
from ...core.replica import StateReplica
from ...core.rules import RULE_KEYS, SYNTAX, RuleError, check_rule
from ...core.settings import MAX_AGE_KEY, ConfigError, parse_port
from ...core.records import check_peripheral_config
from ...core.records import BY_PORT_MARKER
from .registry import Command, CommandContext, Peer, Registry
from .replies import AUTH_OK, ROUTE_NOT_FOUND, USAGE_PREFIX, TextReply, error, failure, ok
from .session import ConfigBlock

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
CLEAR_RULES = "clear"
LAUNCH_USAGE = "/launch start|stop|restart|list [<name>]"


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
    return ok(json.dumps({**await ctx.status(), "Routes Losing": route_losses(ctx.replica)}, indent=4))


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
    from ...supervisor.peripheralcli import PERIPHERAL_ACTIONS, peripheral_lines  # here: only this command needs it
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
