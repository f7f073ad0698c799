"""Defaults, config validation, port parsing and bus endpoints: one place for each fact."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .rules import RULE_KEYS, RuleError, check_rule

CONFIG_FILE_NAME = "orch.cf"
ROUTES_FILE_NAME = "routes.cf"
LOCK_FILE_NAME = "orch.lock"
LOG_DIR_NAME = "logs"
BACKUP_DIR_NAME = "backups"
RUN_DIR_NAME = "run"
RUN_POINTER_FILE_NAME = "orch.run"  # path of the private run folder, when <config>/run is too long for ipc sockets
RUN_DIR_PREFIX = "orch-"  # of that private folder (tempfile.mkdtemp: unpredictable, 0700)
KEYS_DIR_NAME = "keys"
DEFAULT_CONFIG_DIR = "config"

# Timing: everything derives from the heartbeat interval. Actors sleep until their next deadline
# (a beat, an expiry, a flush), so the interval sets the idle cost; two beats per expiry keep a dead
# or silent actor counted out within HEARTBEAT_EXPIRY_S while one lost beat is tolerated.
HEARTBEAT_INTERVAL_S = 1.5
HEARTBEAT_LIVENESS = 2
HEARTBEAT_EXPIRY_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
# On a single board (ipc bus) a dead actor is known at once (SIGCHLD, a dropped data connection): while its
# figures do not change an actor beats this seldom, and says so in its beat (expiry_s). Satellites always beat
# every HEARTBEAT_INTERVAL_S, so a silent board is counted out within HEARTBEAT_EXPIRY_S.
IDLE_HEARTBEAT_INTERVAL_S = 5.0
# A new actor's first beats may reach nobody (a subscription takes a moment to join the broker): it beats this
# often for its first few beats, so the supervisor counts it ready within about a second, not an idle interval.
STARTUP_BEAT_INTERVAL_S = 0.2
STARTUP_BEATS = 6
# The router's sink worker threads wait for the interpreter lock; the default 5 ms switch interval
# would let a busy event loop hold a message-mode write back that long (bench/latency_bench.py).
ROUTER_SWITCH_INTERVAL_S = 0.0005
POLL_INTERVAL_MS = 250  # the retry period of work that is waiting on something else (a busy or absent router)
REQUEST_TIMEOUT_S = 2.0
USAGE_FLUSH_INTERVAL_S = HEARTBEAT_INTERVAL_S
# gateway: first retry of a port it could not bind (held by another process); doubles up to the max
BIND_RETRY_BASE_S = 0.5
BIND_RETRY_MAX_S = 5.0

# Unix socket paths are limited to 107 bytes; longer run dirs move to a private folder in /tmp.
MAX_IPC_PATH_BYTES = 100
PRIVATE_DIR_MODE = 0o700  # run, logs, backups and keys folders
PRIVATE_FILE_MODE = 0o600  # the run folder pointer


ALL_NETWORKS = ("0.0.0.0/0", "::/0")
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
ACCESS_LIST_KEYS = ("allowed_clients", "admin_clients")
SECRET_KEYS = ("admin_token",)  # never logged, never shown


def default_config() -> dict[str, Any]:
    """The orch.cf written when none exists (the seed's defaults; known_ports per docs/protocol.md §4)."""
    return {
        "known_ports": "6200-6300",
        "scan_interval": 5,
        "command_port": 6000,
        "data_port_range": "6001-6099",
        "peripherals": [],
        "script_uuid": str(uuid.uuid4()),
        "known_hosts": ["localhost"],
        "bind_host": "0.0.0.0",
        "offline_after_sweeps": 3,
        # Access (actors/access.py): who may connect, who may administer, optional token for /auth.
        "allowed_clients": list(ALL_NETWORKS),
        "admin_clients": list(LOOPBACK_NETWORKS),
        "admin_token": "",
    }


# Optional orch.cf keys: limits with sensible defaults, absent from a fresh orch.cf.
TUNABLE_DEFAULTS: dict[str, float] = {
    "max_line_bytes": 1 << 20,  # gateway: longest accepted line
    "idle_timeout": 600.0,  # gateway: seconds before a silent client is closed
    "max_connections": 1000,  # gateway: concurrent client connections
    "max_connections_per_address": 64,  # gateway: concurrent connections from one non-admin address
    "admin_reserved_connections": 16,  # gateway: slots of max_connections only admin clients may take
    "auth_max_failures": 5,  # /auth: wrong tokens from one address within auth_failure_window before it is locked
    "auth_failure_window": 60.0,  # /auth: seconds over which failures are counted
    "auth_lockout": 300.0,  # /auth: seconds an address stays locked (even the right token is refused)
    "auth_failure_delay": 0.25,  # /auth: seconds before a wrong token is answered; doubles per recent failure
    "router_queue_messages": 10_000,  # router: payloads waiting per sink
    "router_queue_bytes": 16 << 20,  # router: bytes waiting per sink
    # router: oldest payload kept for any sink (older ones are dropped, never delivered late)
    "router_queue_age_s": 60.0,
    # router: a sink down, or whose oldest payload waited this long (a TCP connect retry takes 1 s), stops holding back
    # its sources' acks
    "router_stall_s": 2.0,
    "gateway_window_messages": 10_000,  # gateway: payloads per source sent but not yet acknowledged by a router
    "gateway_window_bytes": 8 << 20,  # gateway: bytes per source sent but not yet acknowledged
    "gateway_pending_messages": 100_000,  # gateway: payloads per source held beyond the window (reading pauses at 1/4)
    "gateway_pending_bytes": 16 << 20,  # gateway: bytes per source held beyond the window
    "max_peripheral_config_bytes": 64 << 10,  # state: a peripheral's stored /config, as compact JSON
    "max_peripheral_config_depth": 32,  # state: nesting levels of a peripheral's stored /config
    "max_peripherals_per_host": 256,  # state: peripherals one host outside admin_clients may register
    # scanner: seconds a port that accepted may take to answer /info (the original waited 5; a busy board needs ~1);
    # probes run concurrently, so a silent port costs a sweep about this long in all, never this long per port
    "scan_answer_timeout": 2.0,
}
MAX_SCAN_ANSWER_TIMEOUT_S = 60.0  # above this a sweep could outlast any sensible scan_interval
# Optional switches (absent means the default). probe_registered_ports: the scanner also probes each registered
# peripheral's own port outside known_ports (liveness); false keeps every probe inside known_ports.
FLAG_DEFAULTS: dict[str, bool] = {"probe_registered_ports": True}


def flag(config: dict[str, Any], key: str) -> bool:
    """The config's value for an optional switch, or its default when absent or not a boolean."""
    value = config.get(key)
    return value if isinstance(value, bool) else FLAG_DEFAULTS[key]


def tunable(config: dict[str, Any], key: str) -> float:
    """The config's value for an optional limit, or its default when absent or not a positive number."""
    value = config.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return value
    return TUNABLE_DEFAULTS[key]


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


# A sink's own age bound (peripheral key "max_age", seconds): the router's router_queue_age_s for that sink.
MAX_AGE_KEY = "max_age"
MAX_AGE_MIN_S = 0.01  # below a router tick nothing could ever be delivered
MAX_AGE_MAX_S = 86_400.0  # a day: anything longer is a typo, not a wish
MAX_AGE_PATTERN = re.compile(r"^\s*\d+(?:\.\d+)?\s*$", re.ASCII)


def parse_max_age(value: Any) -> float:
    """A sink's max_age in seconds: a number (or ASCII decimal text, as /info and older files write it) in range.

    A number stays as given.
    """
    if isinstance(value, str) and MAX_AGE_PATTERN.match(value):
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not MAX_AGE_MIN_S <= value <= MAX_AGE_MAX_S:
        shown = value if not isinstance(value, str) else value[:20]
        raise ConfigError(f"max_age must be a number of seconds from {MAX_AGE_MIN_S:g} to {MAX_AGE_MAX_S:g}, "
                          f"got {shown!r}")
    return value


def sink_max_age(peripheral: dict[str, Any], config: dict[str, Any]) -> float:
    """The age bound for deliveries to this peripheral: its own max_age when usable, else router_queue_age_s."""
    try:
        return parse_max_age(peripheral[MAX_AGE_KEY])
    except (KeyError, ConfigError):
        return float(tunable(config, "router_queue_age_s"))


MIN_PORT = 1
MAX_PORT = 65535
PORT_PATTERN = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() and int() accept '²' and '٣'


def parse_port(value: str | int, what: str = "port") -> int:
    """The one port parser: a number 1-65535 written in ASCII digits (no sign, space, '_' or other scripts)."""
    if isinstance(value, str) and PORT_PATTERN.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_PORT <= value <= MAX_PORT:
        shown = value if not isinstance(value, str) else value[:20]
        raise ConfigError(f"{what} must be a number from {MIN_PORT} to {MAX_PORT} in ASCII digits, got {shown!r}")
    return value


class SecurityConfigError(ConfigError):
    """A security key that cannot be read: it is never replaced by a more open value, so the instance does not start."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


SECURITY_KEYS = ("bind_host", *ACCESS_LIST_KEYS, *SECRET_KEYS)
LOOPBACK_HOST = "127.0.0.1"
# What the security keys become when orch.cf is not JSON and no last good copy exists: reachable from this machine only.
LOOPBACK_ONLY_SECURITY: dict[str, Any] = {"bind_host": LOOPBACK_HOST, "allowed_clients": list(LOOPBACK_NETWORKS),
                                          "admin_clients": list(LOOPBACK_NETWORKS), "admin_token": ""}
# Written into orch.cf with the loopback-only values, so the reason survives restarts until bind_host is changed.
LOOPBACK_ONLY_KEY = "loopback_only_because"
ROUTE_COUNTERS = ("messages", "bytes", "dropped", "filtered")
INTEGER_PATTERN = re.compile(r"^\s*\d+\s*$", re.ASCII)
DECIMAL_PATTERN = re.compile(r"^\s*\d+(?:\.\d+)?\s*$", re.ASCII)
HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # 1-63 characters, no hyphen at either end
HOST_NAME_PATTERN = re.compile(rf"^(?=.{{1,253}}$){HOST_LABEL}(?:\.{HOST_LABEL})*\.?$", re.ASCII)


def parse_ports(spec: str | int) -> list[int]:
    """Turn "6200-6300,7000" (ranges and single ports, comma separated, ASCII digits) into a sorted port list."""
    if isinstance(spec, bool):
        raise ConfigError(f"port spec must be text like '6200-6300', not {spec!r}")
    if isinstance(spec, int):
        spec = str(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"port spec must be text like '6200-6300', not {spec!r}")
    ports: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        low_text, sep, high_text = part.partition("-")
        try:
            low = parse_port(low_text.strip())
            high = parse_port(high_text.strip()) if sep else low
        except ConfigError:
            raise ConfigError(f"bad port range {part[:40]!r} in {spec[:80]!r}: "
                              "ports are 1-65535 in ASCII digits") from None
        if low > high:
            raise ConfigError(f"port range {part!r} must satisfy start <= end")
        ports.update(range(low, high + 1))
    return sorted(ports)


def parse_networks(spec: Any, key: str = "networks") -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Turn ["10.0.0.0/8", "::1"] into networks (host bits allowed); raise ConfigError naming the bad entry."""
    if not isinstance(spec, list):
        raise ConfigError(f"{key!r} must be a list of networks like \"10.0.0.0/8\", got {spec!r}")
    networks = []
    for entry in spec:
        try:
            if not isinstance(entry, str):
                raise TypeError(entry)
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError):
            raise ConfigError(f"{key!r}: {entry!r} is not a network like \"10.0.0.0/8\" or \"::1\"") from None
    return networks


# ---- per-key readers: the value itself when right, a converted copy when it reads unambiguously, else raise ----
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_int(value: Any, low: int, high: int | None = None) -> Any:
    """An integer in [low, high]; ASCII digit text ("6000") converts."""
    if isinstance(value, str) and INTEGER_PATTERN.match(value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f" from {low} to {high}" if high is not None else f" of at least {low}"
        raise ConfigError(f"must be a whole number{bounds}")
    return value


def read_positive_number(value: Any) -> Any:
    """A finite number above zero; decimal text ("5", "0.5") converts."""
    if isinstance(value, str) and DECIMAL_PATTERN.match(value):
        value = float(value) if "." in value else int(value)
    if not _is_number(value) or value <= 0:
        raise ConfigError("must be a number above zero")
    return value


def read_port_spec(value: Any) -> Any:
    """Port ranges as text; a bare number converts, empty parts between commas ("6200-6300,") are dropped."""
    if isinstance(value, int) and not isinstance(value, bool):
        parse_ports(value)
        return str(value)
    if not isinstance(value, str):
        raise ConfigError("must be text like \"6200-6300,7000\"")
    try:
        parse_ports(value)
        return value
    except ConfigError:
        cleaned = ",".join(part.strip() for part in value.split(",") if part.strip())
        if not cleaned or cleaned == value:
            raise
    parse_ports(cleaned)
    return cleaned


def read_answer_timeout(value: Any) -> Any:
    """scan_answer_timeout: a positive number of seconds, at most MAX_SCAN_ANSWER_TIMEOUT_S."""
    value = read_positive_number(value)
    if value > MAX_SCAN_ANSWER_TIMEOUT_S:
        raise ConfigError(f"must be a number of seconds above zero and at most {MAX_SCAN_ANSWER_TIMEOUT_S:g}")
    return value


def read_bool(value: Any) -> Any:
    """true or false; the text "true"/"false" converts."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError("must be true or false")
    return value


def read_text(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be non-empty text")
    return value


def read_text_list(value: Any) -> Any:
    """A list of names; one name alone converts to a list of one."""
    if isinstance(value, str) and value.strip():
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError("must be a list of names")
    return value


def read_peripheral_list(value: Any) -> Any:
    """The peripheral records (checked one by one later); null converts to an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("must be a list of peripheral records")
    return value


def read_bind_host(value: Any) -> Any:
    """An address of this machine or a host name ("" and "0.0.0.0": every interface); surrounding spaces are dropped."""
    if not isinstance(value, str):
        raise ConfigError("must be an address such as \"0.0.0.0\" or \"127.0.0.1\"")
    stripped = value.strip()
    if stripped:
        try:
            ipaddress.ip_address(stripped)
        except ValueError:
            if not HOST_NAME_PATTERN.match(stripped):
                raise ConfigError("must be an address such as \"0.0.0.0\" or \"127.0.0.1\"") from None
    return value if stripped == value else stripped


def read_networks(value: Any) -> Any:
    """A list of networks; one network as text converts to a list of one (exactly that network, nothing more)."""
    if isinstance(value, str):
        parse_networks([value])
        return [value]
    parse_networks(value)
    return value


def read_token(value: Any) -> Any:
    """Text without spaces (empty turns /auth off); a whole number converts to its digits. Errors never echo it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or any(ch.isspace() for ch in value):
        raise ConfigError("must be text without spaces (empty turns /auth off)")
    return value


KEY_READERS: dict[str, Callable[[Any], Any]] = {
    "known_ports": read_port_spec,
    "data_port_range": read_port_spec,
    "scan_interval": read_positive_number,
    "command_port": lambda value: read_int(value, 1, MAX_PORT),
    "offline_after_sweeps": lambda value: read_int(value, 1),
    "script_uuid": read_text,
    "known_hosts": read_text_list,
    "peripherals": read_peripheral_list,
    "bind_host": read_bind_host,
    "allowed_clients": read_networks,
    "admin_clients": read_networks,
    "admin_token": read_token,
    **{key: read_positive_number for key in TUNABLE_DEFAULTS},
    "scan_answer_timeout": read_answer_timeout,
    **{key: read_bool for key in FLAG_DEFAULTS},
}


@dataclass
class Checked:
    """A file's content after validation per key and per record, with every change explained."""

    value: Any
    warnings: list[str] = field(default_factory=list)  # conversions and resets, one line each, for the log and activity
    reset: dict[str, Any] = field(default_factory=dict)  # key -> the unusable value found (replaced by its default)
    rejected: list[Any] = field(default_factory=list)  # records that cannot be used, as found
    reasons: list[str] = field(default_factory=list)  # why each reset key or rejected record was not used
    # security key -> why it cannot be read (its value is never echoed)
    insecure: dict[str, str] = field(default_factory=dict)


def _shown(key: str, value: Any) -> str:
    """A value for a log line: secrets never appear."""
    text = "<hidden>" if key in SECRET_KEYS else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def loopback_only_reason(config: dict[str, Any]) -> str:
    """Why the ports are on 127.0.0.1 only, while bind_host is still the fallback's; "" otherwise."""
    reason = config.get(LOOPBACK_ONLY_KEY)
    return reason if isinstance(reason, str) and reason and config.get("bind_host") == LOOPBACK_HOST else ""


def check_config(raw: dict[str, Any]) -> Checked:
    """Validate orch.cf key by key: convert what reads unambiguously, reset the rest to defaults, reject bad records.

    Security keys are never reset: an unreadable one is listed in ``insecure`` (and set to its loopback-only value).
    """
    defaults = default_config()
    checked = Checked({**defaults, **raw})
    for key, reader in KEY_READERS.items():
        if key in raw:
            _check_key(checked, key, raw[key], reader, defaults)
    config = checked.value
    config["peripherals"] = _check_records(config["peripherals"], check_peripheral, "uuid", "peripheral", checked)
    return checked


def _check_key(checked: Checked, key: str, value: Any, reader: Callable[[Any], Any], defaults: dict[str, Any]) -> None:
    """Read one key into ``checked.value``: as is, converted (a warning), reset to default (a warning), or insecure."""
    config = checked.value
    try:
        result = reader(value)
    except ConfigError as exc:
        if key in SECURITY_KEYS:
            checked.insecure[key] = f"{key!r}: {exc}, got {_shown(key, value)}"
            config[key] = LOOPBACK_ONLY_SECURITY[key]
            return
        default = defaults.get(key, TUNABLE_DEFAULTS.get(key, FLAG_DEFAULTS.get(key)))
        reason = f"{key!r}: {exc}, got {_shown(key, value)}; using the default {default!r}"
        checked.warnings.append(reason)
        checked.reasons.append(reason)
        checked.reset[key] = value
        if key in defaults:
            config[key] = default
        else:
            config.pop(key)  # a tunable or a switch: absent means its default
        return
    if result is not value:
        checked.warnings.append(f"{key!r}: read {_shown(key, value)} as {_shown(key, result)}")
        config[key] = result


def check_routes(raw: list[Any]) -> Checked:
    """Validate routes.cf record by record: convert what reads unambiguously, reject routes that cannot be used."""
    checked = Checked(None)
    checked.value = _check_records(raw, check_route, "name", "route", checked)
    return checked


def _check_records(records: list[Any], check: Callable[[Any], tuple[dict[str, Any], list[str]]], key: str, kind: str,
                   checked: Checked) -> list[dict[str, Any]]:
    """Keep the usable records (converted where needed), move the others to ``checked.rejected``.

    The first of a duplicate key wins.
    """
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in records:
        try:
            record, notes = check(entry)
            if record[key] in seen:
                raise ConfigError(f"another {kind} earlier in the file has the same {key} {record[key]!r}")
        except ConfigError as exc:
            label = entry.get("name") if isinstance(entry, dict) else None
            named = f"{kind} {label!r}" if label is not None else f"{kind} record {_shown(kind, entry)}"
            reason = f"{named} kept aside: {exc}"
            checked.warnings.append(reason)
            checked.reasons.append(reason)
            checked.rejected.append(entry)
            continue
        seen.add(record[key])
        checked.warnings.extend(f"{kind} {record['name']!r}: {note}" for note in notes)
        kept.append(record)
    return kept


def _need_text(entry: dict[str, Any], key: str) -> None:
    if not isinstance(entry.get(key), str) or not entry[key].strip():
        missing = entry.get(key) in (None, "")
        raise ConfigError(f"it has no {key}" if missing else f"its {key} {entry[key]!r} is not text")


def _read_fields(entry: dict[str, Any], readers: dict[str, Callable[[Any], Any]], notes: list[str]) -> dict[str, Any]:
    """Convert the optional fields that read unambiguously; raise ConfigError for one that cannot be used."""
    record = dict(entry)
    for key, reader in readers.items():
        value = record.get(key)
        if value is None:
            continue
        try:
            result = reader(value)
        except ConfigError as exc:
            raise ConfigError(f"its {key} {exc}, got {_shown(key, value)}") from None
        if result is not value:
            notes.append(f"read {key} {value!r} as {result!r}")
            record[key] = result
    return record


def _read_port_field(value: Any) -> Any:
    return read_int(value, 0, MAX_PORT)


def _read_number(value: Any) -> Any:
    if isinstance(value, str) and DECIMAL_PATTERN.match(value):
        return float(value)
    if not _is_number(value):
        raise ConfigError("must be a number")
    return value


def _read_host(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be an address or host name")
    return value


def _read_counter(value: Any) -> Any:
    return read_int(value, 0)


def _drop_unreadable(record: dict[str, Any], keys: tuple[str, ...], reader: Callable[[Any], Any],
                     notes: list[str]) -> None:
    """Fields the system maintains (times, counters): an unreadable one is dropped (it starts again), never rejected."""
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        try:
            result = reader(value)
        except ConfigError:
            notes.append(f"{key} {_shown(key, value)} unreadable; starts again")
            del record[key]
            continue
        if result is not value:
            notes.append(f"read {key} {value!r} as {result!r}")
            record[key] = result


PERIPHERAL_FIELD_READERS: dict[str, Callable[[Any], Any]] = {"port": _read_port_field, "data_port": _read_port_field,
                                                             "host": _read_host}
ROUTE_FIELD_READERS: dict[str, Callable[[Any], Any]] = {"incoming_port": _read_port_field,
                                                        "outgoing_port": _read_port_field}


def check_peripheral(entry: Any) -> tuple[dict[str, Any], list[str]]:
    """A peripheral record as the original wrote it (duplicate names allowed); ConfigError when it cannot be used."""
    if not isinstance(entry, dict):
        raise ConfigError("it is not an object")
    _need_text(entry, "name")
    _need_text(entry, "uuid")
    notes: list[str] = []
    record = _read_fields(entry, PERIPHERAL_FIELD_READERS, notes)
    _drop_unreadable(record, ("last_seen",), _read_number, notes)
    # a bad hand-edited max_age: the default bound applies
    _drop_unreadable(record, (MAX_AGE_KEY,), parse_max_age, notes)
    if "online" in record and not isinstance(record["online"], bool):
        notes.append(f"online {_shown('online', record.pop('online'))} unreadable; starts offline")
    return record, notes


def check_route(entry: Any) -> tuple[dict[str, Any], list[str]]:
    """A route record: needs a name and both ends; its rules must compile (they are never checked at delivery)."""
    if not isinstance(entry, dict):
        raise ConfigError("it is not an object")
    for key in ("name", "incoming", "outgoing"):
        _need_text(entry, key)
    notes: list[str] = []
    record = _read_fields(entry, ROUTE_FIELD_READERS, notes)
    _drop_unreadable(record, ("last_used", "rate"), _read_number, notes)
    _drop_unreadable(record, ROUTE_COUNTERS, _read_counter, notes)
    for key in RULE_KEYS:
        if record.get(key) is not None:
            try:
                check_rule(key, record[key])
            except RuleError as exc:
                raise ConfigError(f"its {key} cannot be used: {exc}") from None
    return record, notes


def require_secure(checked: Checked) -> None:
    """Raise SecurityConfigError naming the first unreadable security key."""
    for key, reason in checked.insecure.items():
        raise SecurityConfigError(key, f"orch.cf: {reason}; the orchestrator does not start with an unreadable {key!r} "
                                       f"(it never falls back to a more open value): fix it in orch.cf")


def validate_config(raw: Any) -> dict[str, Any]:
    """Strict: a complete config from a parsed orch.cf, missing keys filled; ConfigError for anything not exactly right.

    For changes by command (refused when wrong) and for checking files we wrote; loading uses check_config.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"orch.cf must hold a JSON object, got {type(raw).__name__}")
    checked = check_config(raw)
    require_secure(checked)
    if checked.warnings:
        raise ConfigError(checked.warnings[0])
    return checked.value


def validate_routes(raw: Any) -> list[dict[str, Any]]:
    """Strict: the route list from a parsed routes.cf; ConfigError on wrong shapes."""
    if not isinstance(raw, list):
        raise ConfigError(f"routes.cf must hold a JSON list, got {type(raw).__name__}")
    checked = check_routes(raw)
    if checked.warnings:
        raise ConfigError(checked.warnings[0])
    return raw


@dataclass(frozen=True)
class Endpoints:
    """Where the bus lives. ipc in the run folder by default; any tcp:// address works too."""

    events_in: str  # publishers connect here (broker XSUB)
    events_out: str  # subscribers connect here (broker XPUB)
    state_front: str  # state clients connect here (broker ROUTER)
    state_back: str  # the state keeper connects here (broker DEALER)
    data: str  # routers connect here (gateway ROUTER), the data plane bypasses the broker
    control: str  # the supervisor's control socket (REP)
    keys_dir: str = ""  # CurveZMQ keys, used only for tcp endpoints off loopback (security.py)

    @classmethod
    def local(cls, run_dir: Path, keys_dir: str = "") -> "Endpoints":
        """ipc endpoints inside run_dir."""
        def ipc(name: str) -> str:
            return f"ipc://{run_dir / name}.ipc"
        return cls(ipc("events-in"), ipc("events-out"), ipc("state-front"), ipc("state-back"), ipc("data"),
                   ipc("control"), keys_dir)

    @classmethod
    def tcp(cls, host: str, base_port: int, keys_dir: str = "") -> "Endpoints":
        """Six consecutive tcp ports from base_port on host (for actors on other boards)."""
        ports = [f"tcp://{host}:{base_port + offset}" for offset in range(6)]
        return cls(*ports, keys_dir=keys_dir)

    @property
    def bound_by_broker(self) -> list[str]:
        return [self.events_in, self.events_out, self.state_front, self.state_back]


def in_config_run_dir(config_dir: Path) -> Path | None:
    """<config>/run when the ipc socket paths inside it fit the unix socket limit, else None."""
    candidate = config_dir.resolve() / RUN_DIR_NAME
    return candidate if len(str(candidate / "state-front.ipc")) <= MAX_IPC_PATH_BYTES else None


def run_dir_for(config_dir: Path) -> Path:
    """The folder for the sockets of the instance that owns config_dir.

    <config>/run when its paths fit; otherwise the private folder the supervisor recorded in
    <config>/orch.run (never a predictable name in /tmp that another user could create first).
    Without a record, the too-long <config>/run: nothing listens there, clients say "not running".
    """
    fitting = in_config_run_dir(config_dir)
    if fitting is not None:
        return fitting
    try:
        recorded = (config_dir / RUN_POINTER_FILE_NAME).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        recorded = ""
    return Path(recorded) if recorded.startswith("/") else config_dir.resolve() / RUN_DIR_NAME


@dataclass
class Runtime:
    """What every actor process is started with: where config, sockets and logs live."""

    config_dir: Path
    run_dir: Path
    endpoints: Endpoints
    log_level: str = "INFO"
    console_log: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_config_dir(cls, config_dir: str | Path, **overrides: Any) -> "Runtime":
        """The default runtime of an instance: ipc endpoints in its run folder."""
        config_path = Path(config_dir).resolve()
        run_dir = run_dir_for(config_path)
        endpoints = overrides.pop("endpoints", None) or Endpoints.local(run_dir, str(config_path / KEYS_DIR_NAME))
        return cls(config_dir=config_path, run_dir=run_dir, endpoints=endpoints, **overrides)

    @property
    def log_dir(self) -> Path:
        return self.config_dir / LOG_DIR_NAME

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["config_dir"] = str(self.config_dir)
        data["run_dir"] = str(self.run_dir)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "Runtime":
        data = json.loads(text)
        return cls(
            config_dir=Path(data["config_dir"]),
            run_dir=Path(data["run_dir"]),
            endpoints=Endpoints(**data["endpoints"]),
            log_level=data.get("log_level", "INFO"),
            console_log=data.get("console_log", False),
            extra=data.get("extra", {}),
        )


# Robot bring-up (launchfile.py, peripherals.py): the peripherals the supervisor starts from <config>/peripherals.toml.
LAUNCH_FILE_NAME = "peripherals.toml"
PERIPHERAL_LOG_DIR_NAME = "peripherals"  # under the log folder: <config>/logs/peripherals/<name>.log
PERIPHERAL_DEFAULTS: dict[str, Any] = {
    "restart": "on-failure",
    "stdin": False,
    "start_timeout": 10.0,  # s: a running process not registered by then is flagged; dependents stop waiting for it
    "stop_timeout": 5.0,  # s: SIGTERM to the group, SIGKILL this long after
    "backoff": 0.5,  # s: first restart delay, doubling per crash
    "backoff_max": 30.0,  # s
    "flap_limit": 5,  # crashes within flap_window: left failed until started by hand
    "flap_window": 60.0,  # s
    "stable_after": 10.0,  # s: a run this long forgets earlier crashes
    "log_max_bytes": 1024 * 1024,  # per log file before it rotates
    "log_backups": 3,
}
LAUNCH_FILE_POLL_S = 1.0  # where the kernel cannot watch the config folder: how often peripherals.toml is stat'ed
PERIPHERAL_TAIL_LINES = 20  # last log lines kept in memory for the UI and `peripheral list`
WATCHDOG_GRACE_S = 1.0  # the group watchdog: SIGTERM, then SIGKILL this long after, when the supervisor died
