"""Defaults, config validation, port parsing and bus endpoints: one place for each fact."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tempfile
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE_NAME = "orch.cf"
ROUTES_FILE_NAME = "routes.cf"
LOCK_FILE_NAME = "orch.lock"
LOG_DIR_NAME = "logs"
BACKUP_DIR_NAME = "backups"
RUN_DIR_NAME = "run"
KEYS_DIR_NAME = "keys"
DEFAULT_CONFIG_DIR = "config"

# Timing: everything derives from the heartbeat interval.
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 3
HEARTBEAT_EXPIRY_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
POLL_INTERVAL_MS = int(HEARTBEAT_INTERVAL_S * 1000 / 4)
WRITE_COALESCE_S = 0.2
REQUEST_TIMEOUT_S = 2.0
USAGE_FLUSH_INTERVAL_S = HEARTBEAT_INTERVAL_S

# Unix socket paths are limited to 107 bytes; longer run dirs move to /tmp.
MAX_IPC_PATH_BYTES = 100
PRIVATE_DIR_MODE = 0o700  # run, logs, backups and keys folders


ALL_NETWORKS = ("0.0.0.0/0", "::/0")
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
ACCESS_LIST_KEYS = ("allowed_clients", "admin_clients")
SECRET_KEYS = ("admin_token",)  # never logged, never shown


def default_config() -> dict[str, Any]:
    """The orch.cf written when none exists (the seed's defaults; known_ports per PROTOCOL.md 4)."""
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
    "router_queue_messages": 10_000,  # router: payloads waiting per sink
    "router_queue_bytes": 16 << 20,  # router: bytes waiting per sink
    "router_queue_age_s": 60.0,  # router: oldest payload kept for any sink (older ones are dropped, never delivered late)
    "router_stall_s": 2.0,  # router: a sink down, or whose oldest payload waited this long (a TCP connect retry takes 1 s), stops holding back its sources' acks
    "gateway_window_messages": 10_000,  # gateway: payloads per source sent but not yet acknowledged by a router
    "gateway_window_bytes": 8 << 20,  # gateway: bytes per source sent but not yet acknowledged
    "gateway_pending_messages": 100_000,  # gateway: payloads per source held beyond the window (reading pauses at 1/4)
    "gateway_pending_bytes": 16 << 20,  # gateway: bytes per source held beyond the window
}


def tunable(config: dict[str, Any], key: str) -> float:
    """The config's value for an optional limit, or its default when absent or not a positive number."""
    value = config.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return value
    return TUNABLE_DEFAULTS[key]


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


def parse_ports(spec: str | int) -> list[int]:
    """Turn "6200-6300,7000" (ranges and single ports, comma separated) into a sorted port list."""
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
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise ConfigError(f"bad port range {part!r} in {spec!r}") from None
        if not (1 <= low <= high <= 65535):
            raise ConfigError(f"port range {part!r} must satisfy 1 <= start <= end <= 65535")
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


def _check_type(config: dict[str, Any], key: str, kinds: tuple[type, ...]) -> None:
    value = config.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ConfigError(f"{key!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")


def validate_config(raw: Any) -> dict[str, Any]:
    """Return a complete config from a parsed orch.cf, filling missing keys; raise ConfigError on wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"orch.cf must hold a JSON object, got {type(raw).__name__}")
    config = default_config()
    config.update(raw)
    parse_ports(config["known_ports"])
    parse_ports(config["data_port_range"])
    _check_type(config, "scan_interval", (int, float))
    if config["scan_interval"] <= 0:
        raise ConfigError("'scan_interval' must be positive")
    _check_type(config, "command_port", (int,))
    if not 1 <= config["command_port"] <= 65535:
        raise ConfigError("'command_port' must be a port number")
    _check_type(config, "script_uuid", (str,))
    _check_type(config, "offline_after_sweeps", (int,))
    if not isinstance(config["peripherals"], list):
        raise ConfigError("'peripherals' must be a list")
    if not isinstance(config["known_hosts"], list) or not all(isinstance(h, str) for h in config["known_hosts"]):
        raise ConfigError("'known_hosts' must be a list of host names")
    for key in ACCESS_LIST_KEYS:
        parse_networks(config[key], key)
    token = config["admin_token"]
    if not isinstance(token, str) or any(ch.isspace() for ch in token):
        raise ConfigError("'admin_token' must be text without spaces (empty turns /auth off)")  # never echo a secret
    for key in TUNABLE_DEFAULTS:
        if key in config and tunable(config, key) != config[key]:
            raise ConfigError(f"{key!r} must be a positive number, got {config[key]!r}")
    for entry in config["peripherals"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("uuid"), str) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"each peripheral needs a text 'name' and 'uuid', got {entry!r}")
    return config


def validate_routes(raw: Any) -> list[dict[str, Any]]:
    """Return the route list from a parsed routes.cf; raise ConfigError on wrong shapes."""
    if not isinstance(raw, list):
        raise ConfigError(f"routes.cf must hold a JSON list, got {type(raw).__name__}")
    for route in raw:
        if not isinstance(route, dict):
            raise ConfigError(f"each route must be an object, got {route!r}")
        for key in ("name", "incoming", "outgoing"):
            if not isinstance(route.get(key), str):
                raise ConfigError(f"route {route.get('name')!r} needs a text {key!r}")
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
        return cls(ipc("events-in"), ipc("events-out"), ipc("state-front"), ipc("state-back"), ipc("data"), ipc("control"), keys_dir)

    @classmethod
    def tcp(cls, host: str, base_port: int, keys_dir: str = "") -> "Endpoints":
        """Six consecutive tcp ports from base_port on host (for actors on other boards)."""
        ports = [f"tcp://{host}:{base_port + offset}" for offset in range(6)]
        return cls(*ports, keys_dir=keys_dir)

    @property
    def bound_by_broker(self) -> list[str]:
        return [self.events_in, self.events_out, self.state_front, self.state_back]


def run_dir_for(config_dir: Path) -> Path:
    """The folder for sockets and pid files of the instance that owns config_dir."""
    candidate = config_dir.resolve() / RUN_DIR_NAME
    if len(str(candidate / "state-front.ipc")) <= MAX_IPC_PATH_BYTES:
        return candidate
    digest = f"{zlib.crc32(str(config_dir.resolve()).encode()):08x}"  # zlib, not hashlib: OpenSSL costs 4 MB per process
    return Path(tempfile.gettempdir()) / f"orch-{digest}"


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

    def ensure_dirs(self) -> None:
        for folder in (self.config_dir, self.run_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for private in (self.run_dir, self.log_dir):  # sockets and logs: owner only
            os.chmod(private, PRIVATE_DIR_MODE)
