"""The state keeper's tables and the rules for changing them. Pure logic: no sockets, no files.

Every mutating method returns the list of changes it made, as (kind, key, value) triples that
the keeper numbers and publishes; value None means "deleted".
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..core.errors import BadArguments, DuplicateRoute, LimitReached, NotOwner, UnknownPeripheral, UnknownRoute
from ..core.net import LOCAL_HOST, canonical_host, is_own_listener, same_host
from ..core.protocol import UpdateKind
from ..core.records import NAME_PATTERN, check_peripheral_config, is_uuid
from ..core.rules import RULE_KEYS, RuleError, check_rule
from ..core.settings import (ACCESS_LIST_KEYS, MAX_AGE_KEY, ROUTE_COUNTERS, SECRET_KEYS, TUNABLE_DEFAULTS, ConfigError,
                             default_config, parse_max_age, parse_port, parse_ports, tunable, validate_config)

DELIVERY_MODES = ("message", "stream")
SETTABLE_CONFIG_KEYS = ("known_ports", "known_hosts", "scan_interval", "offline_after_sweeps", "command_port",
                        "data_port_range", "bind_host", *ACCESS_LIST_KEYS, *SECRET_KEYS, *TUNABLE_DEFAULTS)
# The settings a reset keeps, so the instance stays reachable where it was just reached.
KEPT_ON_RESET = ("command_port", "data_port_range", "bind_host", "known_ports", "known_hosts",
                 *ACCESS_LIST_KEYS, *SECRET_KEYS)

Change = tuple[str, str, Any]

log = logging.getLogger(__name__)

LISTENER_CONFIG_KEYS = ("command_port", "data_port_range", "bind_host")


@dataclass(frozen=True)
class Caller:
    """Who sent a request through a client connection: its exact address and whether it has admin rights."""

    host: str
    admin: bool


def caller_of(args: dict[str, Any]) -> Caller | None:
    """The client behind a request; None when our own actors ask (no "host" given): they are trusted."""
    if "host" not in args:
        return None
    return Caller(canonical_host(args["host"]), args.get("admin") is True)


# ---- a peripheral's config: /config (pushed) wins over /info (answered to the scanner) -------------
PUSHED_KEYS_FIELD = "config_pushed"  # the keys the peripheral's last /config set: a later /info never replaces them


def pushed_keys(record: dict[str, Any]) -> set[str]:
    """The keys the last /config set (an unreadable field, e.g. from a hand edit, protects nothing)."""
    keys = record.get(PUSHED_KEYS_FIELD)
    return {key for key in keys if isinstance(key, str)} if isinstance(keys, list) else set()


def _follow_delivery(record: dict[str, Any], changed: dict[str, Any]) -> None:
    """A delivery key among the keys just stored sets the delivery mode too."""
    if changed.get("delivery") in DELIVERY_MODES:
        record["delivery"] = changed["delivery"]


def merge_info_config(record: dict[str, Any], answered: dict[str, Any]) -> None:
    """/info adds and updates its own keys; the keys the last /config set stay as /config set them."""
    protected = pushed_keys(record)
    own = {key: value for key, value in answered.items() if key not in protected}
    if not own:
        return
    current = record.get("config")
    record["config"] = {**(current if isinstance(current, dict) else {}), **own}
    _follow_delivery(record, own)


def store_pushed_config(record: dict[str, Any], value: dict[str, Any]) -> None:
    """A new /config: its keys replace those of the previous /config (keys only that one set go) and win from now on."""
    current = record.get("config")
    previous = pushed_keys(record)
    kept = {k: v for k, v in current.items() if k not in previous} if isinstance(current, dict) else {}
    record["config"] = {**kept, **value}
    record[PUSHED_KEYS_FIELD] = sorted(value)
    _follow_delivery(record, value)


def _need(args: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    value = args.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadArguments(f"missing or invalid {key!r}")
    return value


def _max_age(value: Any) -> float:
    try:
        return parse_max_age(value)
    except ConfigError as exc:
        raise BadArguments(str(exc)) from None


def _port(args: dict[str, Any], key: str = "port") -> int:
    try:
        return parse_port(args.get(key), key)  # type: ignore[arg-type]  # parse_port refuses every other type
    except ConfigError as exc:
        raise BadArguments(str(exc)) from None


class Tables:
    """Peripherals by uuid, routes by name, and the config (orch.cf without its peripheral list)."""

    def __init__(self, config: dict[str, Any], routes: list[dict[str, Any]],
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.bad_info_max_age: dict[str, Any] = {}  # uuid -> the bad /info max_age last warned about
        self.peripherals: dict[str, dict[str, Any]] = {}
        for entry in config.get("peripherals", []):
            self.peripherals[entry["uuid"]] = self._normalise_peripheral(entry)
        self.config = {k: v for k, v in config.items() if k != "peripherals"}
        self.routes: dict[str, dict[str, Any]] = {r["name"]: self._normalise_route(r) for r in routes}

    # ---- file form -------------------------------------------------------------------
    def config_document(self) -> dict[str, Any]:
        """orch.cf as written: the documented keys first, peripherals as a list."""
        document = dict(self.config)
        document["peripherals"] = list(self.peripherals.values())
        return document

    def routes_document(self) -> list[dict[str, Any]]:
        return list(self.routes.values())

    def snapshot(self) -> dict[str, Any]:
        return {"config": dict(self.config), "peripherals": list(self.peripherals.values()),
                "routes": list(self.routes.values())}

    @staticmethod
    def _normalise_peripheral(entry: dict[str, Any]) -> dict[str, Any]:
        # config keeps its type from the file (the original wrote "" for none): storing something makes it an object
        record = {"name": entry["name"], "uuid": entry["uuid"], "config": entry["config"] if "config" in entry else {},
                  "port": entry.get("port"),
                  "last_seen": entry.get("last_seen"), "data_port": entry.get("data_port")}
        record.update({k: v for k, v in entry.items() if k not in record})
        record.setdefault("online", False)
        record.setdefault("host", "localhost")
        record.setdefault("delivery", "message")
        return record

    @staticmethod
    def _normalise_route(entry: dict[str, Any]) -> dict[str, Any]:
        record = {"name": entry["name"], "incoming": entry["incoming"], "outgoing": entry["outgoing"],
                  "incoming_port": entry.get("incoming_port"), "outgoing_port": entry.get("outgoing_port"),
                  "last_used": entry.get("last_used")}
        record.update({k: v for k, v in entry.items() if k not in record})
        for counter in ROUTE_COUNTERS:
            record.setdefault(counter, 0)
        record.setdefault("rate", 0.0)
        return record

    def load_documents(self, config: dict[str, Any], routes: list[dict[str, Any]]) -> list[Change]:
        """Take validated file contents (a merged hand edit) as the tables; return the changes to publish."""
        changes: list[Change] = []
        peripherals = {entry["uuid"]: self._normalise_peripheral(entry) for entry in config.get("peripherals", [])}
        changes += self._replace(self.peripherals, peripherals, UpdateKind.PERIPHERAL.value)
        changes += self._replace(self.routes, {entry["name"]: self._normalise_route(entry) for entry in routes},
                                 UpdateKind.ROUTE.value)
        settings = {k: v for k, v in config.items() if k != "peripherals"}
        if settings != self.config:
            self.config = settings
            changes.append((UpdateKind.CONFIG.value, "", dict(self.config)))
        return changes

    @staticmethod
    def _replace(table: dict[str, dict[str, Any]], wanted: dict[str, dict[str, Any]], kind: str) -> list[Change]:
        changes: list[Change] = [(kind, key, None) for key in table if key not in wanted]
        for key, _, _ in changes:
            del table[key]
        for key, record in wanted.items():
            if table.get(key) != record:
                table[key] = record
                changes.append((kind, key, dict(record)))
        return changes

    # ---- lookups ---------------------------------------------------------------------
    def by_name(self, name: str) -> dict[str, Any]:
        for peripheral in self.peripherals.values():
            if peripheral["name"] == name:
                return peripheral
        raise UnknownPeripheral(f"no peripheral named {name!r}")

    def by_name_or_uuid(self, ident: str) -> dict[str, Any]:
        if ident in self.peripherals:
            return self.peripherals[ident]
        return self.by_name(ident)

    def unique_name(self, wanted: str, uuid: str) -> str:
        """wanted if free (or already this uuid's), else wanted_1, wanted_2, ... (docs/protocol.md §5)."""
        taken = {p["name"] for p in self.peripherals.values() if p["uuid"] != uuid}
        if wanted not in taken:
            return wanted
        suffix = 1
        while f"{wanted}_{suffix}" in taken:
            suffix += 1
        return f"{wanted}_{suffix}"

    def free_data_port(self, uuid: str) -> int:
        """The lowest data port no other peripheral holds; when all are held, the least shared one."""
        ports = [p for p in parse_ports(self.config["data_port_range"]) if p != self.config["command_port"]]
        if not ports:
            raise BadArguments("data_port_range holds no usable port")
        holders: dict[int, int] = {}
        for peripheral in self.peripherals.values():
            if peripheral["uuid"] != uuid and peripheral.get("data_port") is not None:
                holders[peripheral["data_port"]] = holders.get(peripheral["data_port"], 0) + 1
        return min(ports, key=lambda port: (holders.get(port, 0), port))

    def _peripheral_change(self, record: dict[str, Any]) -> Change:
        return (UpdateKind.PERIPHERAL.value, record["uuid"], dict(record))

    def _route_change(self, route: dict[str, Any]) -> Change:
        return (UpdateKind.ROUTE.value, route["name"], dict(route))

    def _routes_touching(self, uuid: str) -> list[dict[str, Any]]:
        return [r for r in self.routes.values() if uuid in (r["incoming"], r["outgoing"])]

    def _refresh_route_ports(self, uuid: str) -> list[Change]:
        """Keep incoming_port / outgoing_port in step with the peripheral's port."""
        port = self.peripherals[uuid]["port"]
        changes = []
        for route in self._routes_touching(uuid):
            before = (route["incoming_port"], route["outgoing_port"])
            if route["incoming"] == uuid:
                route["incoming_port"] = port
            if route["outgoing"] == uuid:
                route["outgoing_port"] = port
            if before != (route["incoming_port"], route["outgoing_port"]):
                changes.append(self._route_change(route))
        return changes

    # ---- peripherals -----------------------------------------------------------------
    def register(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """/register: add or update a peripheral, assign its data port; returns (record, changes).

        A uuid belongs to the host that registered it: from that host a re-registration updates name and port;
        from another host it needs admin rights, and the host recorded then follows the registration.
        """
        name, uuid, port = _need(args, "name"), _need(args, "uuid"), _port(args)
        if not NAME_PATTERN.match(name):
            raise BadArguments(f"invalid peripheral name {name!r}")
        if not is_uuid(uuid):
            raise BadArguments(f"invalid uuid {uuid!r}: expected 36 hex digits and dashes")
        caller = caller_of(args)
        self._refuse_own_listener(caller.host if caller else LOCAL_HOST, port, args.get("this_machine") is True)
        record = self.peripherals.get(uuid)
        if record is None:
            self._check_host_quota(caller)
            record = self._normalise_peripheral({"name": self.unique_name(name, uuid), "uuid": uuid, "port": port})
            self.peripherals[uuid] = record
        else:
            self._check_owner(record, caller, "re-registering")
            if record["name"] != name and not record["name"].startswith(f"{name}_"):
                record["name"] = self.unique_name(name, uuid)
        record["port"] = port
        if caller is not None:
            record["host"] = caller.host
        if record.get("data_port") is None:
            record["data_port"] = self.free_data_port(uuid)
        record["last_seen"] = self.clock()
        record["online"] = True
        return record, [self._peripheral_change(record), *self._refresh_route_ports(uuid)]

    def seen(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """The scanner found a peripheral answering /info; a known one never moves host, a live one never moves port."""
        name, uuid, port = _need(args, "name"), _need(args, "uuid"), _port(args)
        if not is_uuid(uuid):
            raise BadArguments(f"invalid uuid {uuid!r}")
        host, address = args.get("host") or "localhost", args.get("address")
        self._refuse_own_listener(address or host, port)
        record = self.peripherals.get(uuid)
        if record is None:  # recorded by address, like a registration: the same host may then send and register as it
            record = self._normalise_peripheral({"name": self.unique_name(name, uuid), "uuid": uuid, "port": port,
                                                 "host": canonical_host(address or host)})
            self.peripherals[uuid] = record
        else:
            self._check_scanner_move(record, host, address, port)
        record["port"] = port
        if isinstance(args.get("config"), dict) and args["config"]:
            merge_info_config(record, args["config"])
            if MAX_AGE_KEY not in pushed_keys(record):  # /config wins for max_age as for every key it set
                self._take_info_max_age(record, args["config"])
        record["last_seen"] = self.clock()
        record["online"] = True
        return record, [self._peripheral_change(record), *self._refresh_route_ports(uuid)]

    def alive(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """The scanner heard from these peripherals another way (they sent data): seen now, online.

        Unknown uuids are skipped.

        Returns {uuid: last_seen} for the ones updated.
        """
        uuids = _need(args, "uuids", list)
        now, result, changes = self.clock(), {}, []
        for uuid in uuids:
            record = self.peripherals.get(uuid) if isinstance(uuid, str) else None
            if record is None:
                continue
            record["last_seen"] = now
            record["online"] = True
            result[uuid] = now
            changes.append(self._peripheral_change(record))
        return result, changes

    def lost(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """Mark a peripheral offline (scanner liveness, or /exit <uuid> from its own host or an admin); routes stay."""
        record = self.by_name_or_uuid(_need(args, "uuid"))
        self._check_owner(record, caller_of(args), "/exit for")
        if not record["online"]:
            return record, []
        record["online"] = False
        return record, [self._peripheral_change(record)]

    def set_peripheral_config(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """/config from the peripheral's own host (or an admin), within the size and depth limits."""
        record = self.by_name_or_uuid(_need(args, "uuid"))
        value = _need(args, "config", dict)
        self._check_owner(record, caller_of(args), "/config for")
        check_peripheral_config(value, self.config)
        if MAX_AGE_KEY in value:
            record[MAX_AGE_KEY] = _max_age(value[MAX_AGE_KEY])  # refused before anything of the /config is stored
        store_pushed_config(record, value)
        return record, [self._peripheral_change(record)]

    def set_delivery(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        record = self.by_name_or_uuid(_need(args, "peripheral"))
        mode = _need(args, "mode")
        if mode not in DELIVERY_MODES:
            raise BadArguments(f"delivery mode must be one of {', '.join(DELIVERY_MODES)}")
        max_age = _max_age(args[MAX_AGE_KEY]) if MAX_AGE_KEY in args else None
        record["delivery"] = mode
        if max_age is not None:
            record[MAX_AGE_KEY] = max_age
        return record, [self._peripheral_change(record)]

    def _take_info_max_age(self, record: dict[str, Any], info: dict[str, Any]) -> None:
        """max_age= from an /info answer; a bad value keeps the one held (the scanner cannot answer the peripheral)."""
        if MAX_AGE_KEY not in info:
            return
        try:
            record[MAX_AGE_KEY] = parse_max_age(info[MAX_AGE_KEY])
        except ConfigError as exc:
            if self.bad_info_max_age.get(record["uuid"]) != info[MAX_AGE_KEY]:  # once per value, not once per sweep
                self.bad_info_max_age[record["uuid"]] = info[MAX_AGE_KEY]
                log.warning("%s (%s) announced a bad max_age in /info (%s); keeping %s",
                            record["name"], record["uuid"][:8], exc,
                            record.get(MAX_AGE_KEY, "the default (router_queue_age_s)"))

    def remove_peripheral(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """Forget a peripheral; the routes that start or end at it go too (listed in the result)."""
        record = self.by_name_or_uuid(_need(args, "name"))
        del self.peripherals[record["uuid"]]
        removed = self._routes_touching(record["uuid"])
        for route in removed:
            del self.routes[route["name"]]
        gone = [(UpdateKind.ROUTE.value, r["name"], None) for r in removed]
        changes = [(UpdateKind.PERIPHERAL.value, record["uuid"], None)] + gone
        return {"peripheral": record, "removed_routes": [r["name"] for r in removed]}, changes

    # ---- who may do what -------------------------------------------------------------
    @staticmethod
    def _check_owner(record: dict[str, Any], caller: Caller | None, action: str) -> None:
        """Only the host that registered a peripheral, an admin, or our own actors may act for it."""
        if caller is None or caller.admin or same_host(record.get("host"), caller.host):
            return
        raise NotOwner(f"{action} {record['name']} ({record['uuid']}) refused: it is registered from another host, "
                       f"so that needs admin rights (admin_clients or /auth)")

    def _check_scanner_move(self, record: dict[str, Any], host: str, address: str | None, port: int) -> None:
        """The scanner has no admin rights: a uuid answering elsewhere is not moved.

        Only a restarted, offline one on its own host is.
        """
        recorded = record.get("host")
        if not (same_host(recorded, host) or (address is not None and same_host(recorded, address))):
            raise NotOwner(f"{record['name']} ({record['uuid'][:8]}) answered /info on {host}:{port} "
                           f"but is registered from another host; not moved")
        if port != record.get("port") and record.get("online") and isinstance(record.get("port"), int):
            raise NotOwner(f"{record['name']} ({record['uuid'][:8]}) answered /info on port {port} "
                           f"while online on port {record['port']}; not moved")

    def _check_host_quota(self, caller: Caller | None) -> None:
        """A host outside admin_clients registers at most max_peripherals_per_host peripherals (a flood stops here)."""
        if caller is None or caller.admin:
            return
        limit = int(tunable(self.config, "max_peripherals_per_host"))
        held = sum(1 for p in self.peripherals.values() if p.get("host") == caller.host)
        if held >= limit:
            raise LimitReached(f"host {caller.host} already has {held} peripherals registered "
                               f"(max_peripherals_per_host {limit}); remove some or ask an admin")

    def _refuse_own_listener(self, host: Any, port: int, this_machine: bool = False,
                             config: dict[str, Any] | None = None) -> None:
        if is_own_listener(host, port, config or self.config, this_machine):
            raise BadArguments(f"port {port} on {canonical_host(host)} is one of this orchestrator's own listeners "
                               f"(command or data port); a peripheral cannot use it")

    # ---- routes ----------------------------------------------------------------------
    def add_route(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        name = _need(args, "name")
        if not NAME_PATTERN.match(name):
            raise BadArguments(f"invalid route name {name!r}")
        if name in self.routes:
            raise DuplicateRoute(f"route {name!r} already exists")
        incoming = self.by_name(_need(args, "incoming"))
        outgoing = self.by_name(_need(args, "outgoing"))
        route = self._normalise_route({"name": name, "incoming": incoming["uuid"], "outgoing": outgoing["uuid"],
                                       "incoming_port": incoming["port"], "outgoing_port": outgoing["port"],
                                       "last_used": None})
        self.routes[name] = route
        return route, [self._route_change(route)]

    def edit_route(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """Change a route's ends and/or name; counters and last_used stay."""
        name = _need(args, "name")
        if name not in self.routes:
            raise UnknownRoute(f"no route named {name!r}")
        route = dict(self.routes[name])
        changes: list[Change] = []
        if args.get("incoming"):
            incoming = self.by_name(args["incoming"])
            route["incoming"], route["incoming_port"] = incoming["uuid"], incoming["port"]
        if args.get("outgoing"):
            outgoing = self.by_name(args["outgoing"])
            route["outgoing"], route["outgoing_port"] = outgoing["uuid"], outgoing["port"]
        new_name = args.get("new_name") or name
        if new_name != name:
            if new_name in self.routes:
                raise DuplicateRoute(f"route {new_name!r} already exists")
            if not isinstance(new_name, str) or not NAME_PATTERN.match(new_name):
                raise BadArguments(f"invalid route name {new_name!r}")
            del self.routes[name]
            changes.append((UpdateKind.ROUTE.value, name, None))
            route["name"] = new_name
        self.routes[new_name] = route
        return route, changes + [self._route_change(route)]

    def remove_route(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        name = _need(args, "name")
        route = self.routes.pop(name, None)
        if route is None:
            raise UnknownRoute(f"no route named {name!r}")
        return route, [(UpdateKind.ROUTE.value, name, None)]

    def set_route_rule(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """Set a route's filter or transform (validated now, never at delivery), or clear both (key "clear")."""
        name, key = _need(args, "name"), _need(args, "key")
        route = self.routes.get(name)
        if route is None:
            raise UnknownRoute(f"no route named {name!r}")
        if key == "clear":
            for rule_key in RULE_KEYS:
                route.pop(rule_key, None)
        else:
            try:
                check_rule(key, args.get("rule"))
            except RuleError as exc:
                raise BadArguments(str(exc)) from None
            route[key] = args["rule"]
        return route, [self._route_change(route)]

    def route_usage(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """Counters from a router: {route: {messages, bytes, dropped, last_used, rate}}, added up here."""
        usage = _need(args, "usage", dict)
        changes = []
        for name, counts in usage.items():
            route = self.routes.get(name)
            if route is None or not isinstance(counts, dict):
                continue
            for counter in ROUTE_COUNTERS:
                value = counts.get(counter, 0)
                if isinstance(value, int) and not isinstance(value, bool):
                    route[counter] += value
            if isinstance(counts.get("last_used"), (int, float)):
                route["last_used"] = max(route["last_used"] or 0, counts["last_used"])
            if isinstance(counts.get("rate"), (int, float)):
                route["rate"] = float(counts["rate"])
            changes.append(self._route_change(route))
        return {"updated": len(changes)}, changes

    # ---- config ----------------------------------------------------------------------
    def set_config(self, args: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        """Change settings (known_ports, scan_interval, ...); validated as a whole before it applies."""
        values = _need(args, "values", dict)
        unknown = [k for k in values if k not in SETTABLE_CONFIG_KEYS]
        if unknown:
            raise BadArguments(f"cannot set {', '.join(unknown)}; settable: {', '.join(SETTABLE_CONFIG_KEYS)}")
        candidate = {**self.config, **values, "peripherals": []}
        try:
            validated = validate_config(candidate)
        except ConfigError as exc:
            raise BadArguments(str(exc)) from None
        validated.pop("peripherals")
        if any(key in values for key in LISTENER_CONFIG_KEYS):
            for peripheral in self.peripherals.values():
                if isinstance(peripheral.get("port"), int):
                    self._refuse_own_listener(peripheral.get("host"), peripheral["port"], config=validated)
        self.config = validated
        return dict(self.config), [(UpdateKind.CONFIG.value, "", dict(self.config))]

    def reset(self) -> tuple[dict[str, Any], list[Change]]:
        """Forget every peripheral and route, take a new script_uuid; keep how the instance is reached."""
        fresh = default_config()
        fresh.pop("peripherals")
        for key in KEPT_ON_RESET:
            fresh[key] = self.config[key]
        self.config = fresh
        self.peripherals.clear()
        self.routes.clear()
        return dict(self.config), [(UpdateKind.RESET.value, "", dict(self.config))]
