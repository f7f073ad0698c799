"""The launch file: ``<config>/peripherals.toml``, the robot's own programs the supervisor starts and watches.

Written by hand, never by the system. One table per peripheral under ``[peripherals.<key>]``
(README "Bringing up a robot"). Validation works as for orch.cf: a bad entry is reported with its
key and skipped, the others are kept; a file that is not TOML at all yields no entries and one problem.
"""
from __future__ import annotations

import math
import re
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.settings import LAUNCH_FILE_NAME, PERIPHERAL_DEFAULTS
from ..core.records import NAME_PATTERN, is_uuid

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 boards
    import tomli as tomllib

RESTART_POLICIES = ("always", "on-failure", "never")
STDIN_MODES = {False: "none", True: "pipe", "pty": "pty"}
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # the key names the log file: no slash, no leading dot
TOP_LEVEL_KEYS = ("peripherals",)
NUMBER_LIMITS: dict[str, tuple[float, float]] = {  # key: (lowest, highest) accepted
    "start_timeout": (0.05, 3600.0), "stop_timeout": (0.05, 600.0),
    "backoff": (0.01, 3600.0), "backoff_max": (0.01, 86400.0),
    "flap_window": (0.1, 86400.0), "stable_after": (0.1, 86400.0),
}
INT_LIMITS: dict[str, tuple[int, int]] = {"flap_limit": (1, 1000), "log_max_bytes": (1024, 1 << 30),
                                          "log_backups": (0, 100)}
KNOWN_KEYS = frozenset({"command", "cwd", "env", "restart", "after", "name", "uuid", "stdin", *NUMBER_LIMITS,
                        *INT_LIMITS})
# a change to one of these restarts the peripheral; others apply in place
PROCESS_FIELDS = ("command", "cwd", "env", "stdin")


class LaunchEntryError(ValueError):
    """One launch-file entry that cannot be used; the message names the key."""


@dataclass(frozen=True)
class PeripheralSpec:
    """One validated ``[peripherals.<key>]`` table with the defaults filled in."""

    key: str
    command: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...] = ()
    restart: str = PERIPHERAL_DEFAULTS["restart"]
    after: tuple[str, ...] = ()
    name: str = ""
    uuid: str | None = None
    stdin: str = "none"
    start_timeout: float = PERIPHERAL_DEFAULTS["start_timeout"]
    stop_timeout: float = PERIPHERAL_DEFAULTS["stop_timeout"]
    backoff: float = PERIPHERAL_DEFAULTS["backoff"]
    backoff_max: float = PERIPHERAL_DEFAULTS["backoff_max"]
    flap_limit: int = PERIPHERAL_DEFAULTS["flap_limit"]
    flap_window: float = PERIPHERAL_DEFAULTS["flap_window"]
    stable_after: float = PERIPHERAL_DEFAULTS["stable_after"]
    log_max_bytes: int = PERIPHERAL_DEFAULTS["log_max_bytes"]
    log_backups: int = PERIPHERAL_DEFAULTS["log_backups"]

    def process_identity(self) -> tuple[Any, ...]:
        """What the running process was started with: when it changes, the process must be restarted."""
        return tuple(getattr(self, name) for name in PROCESS_FIELDS)


@dataclass
class LaunchFile:
    """The usable entries (in file order) and one readable line per problem."""

    peripherals: dict[str, PeripheralSpec] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def launch_file_path(config_dir: Path) -> Path:
    return config_dir / LAUNCH_FILE_NAME


def read_launch_file(config_dir: Path) -> LaunchFile | None:
    """The launch file of this config folder, or None when there is none (no peripherals to launch)."""
    path = launch_file_path(config_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return LaunchFile(problems=[f"{path.name}: cannot be read ({exc}); no peripheral is started from it"])
    return parse_launch_text(text, config_dir)


def parse_launch_text(text: str, config_dir: Path) -> LaunchFile:
    """Validate the whole file; a bad entry is reported and skipped, the others are kept."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return LaunchFile(problems=[f"{LAUNCH_FILE_NAME}: not valid TOML ({exc})"])
    result = LaunchFile()
    result.problems += [f"{LAUNCH_FILE_NAME}: unknown top-level key {key!r} ignored "
                        "(expected [peripherals.<name>] tables)" for key in document if key not in TOP_LEVEL_KEYS]
    tables = document.get("peripherals", {})
    if not isinstance(tables, dict):
        result.problems.append(f"{LAUNCH_FILE_NAME}: 'peripherals' must be a table of tables")
        return result
    for key, entry in tables.items():
        try:
            result.peripherals[key] = parse_entry(key, entry, config_dir)
        except LaunchEntryError as exc:
            result.problems.append(f"peripherals.{key}: {exc}; skipped")
    drop_unknown_dependencies(result)
    break_dependency_cycles(result)
    return result


def drop_unknown_dependencies(result: LaunchFile) -> None:
    """An ``after`` naming no entry (or itself) is reported and ignored: the peripheral still starts."""
    for key, spec in list(result.peripherals.items()):
        unknown = [d for d in spec.after if d not in result.peripherals or d == key]
        if unknown:
            named = ", ".join(map(repr, unknown))
            result.problems.append(f"peripherals.{key}: after names {named}, not another entry; ignored")
            result.peripherals[key] = replace(spec, after=tuple(d for d in spec.after if d not in unknown))


def break_dependency_cycles(result: LaunchFile) -> None:
    """An ``after`` that closes a cycle (a after b, b after a) would leave its entries waiting for each other
    until start_timeout on every start: the edge that closes it is reported, with the cycle, and ignored.
    (A depth-first walk with its own stack: a long chain in a hand-written file must not hit the recursion limit.)"""
    done: set[str] = set()
    for root in list(result.peripherals):
        if root in done:
            continue
        path: list[str] = [root]
        todo: list[list[str]] = [list(result.peripherals[root].after)]
        while path:
            key = path[-1]
            if not todo[-1]:
                done.add(key)
                path.pop()
                todo.pop()
                continue
            dependency = todo[-1].pop(0)
            if dependency in path:
                cycle = " -> ".join([*path[path.index(dependency):], dependency])
                result.problems.append(f"peripherals.{key}: after {dependency!r} closes a cycle ({cycle}); ignored")
                spec = result.peripherals[key]
                result.peripherals[key] = replace(spec, after=tuple(d for d in spec.after if d != dependency))
            elif dependency not in done:
                path.append(dependency)
                todo.append(list(result.peripherals[dependency].after))


def parse_entry(key: str, entry: Any, config_dir: Path) -> PeripheralSpec:
    """One table -> PeripheralSpec; raises LaunchEntryError naming what is wrong."""
    if not KEY_PATTERN.match(key):
        raise LaunchEntryError("the key must be letters, digits, '_', '.' or '-' (it names the log file)")
    if not isinstance(entry, dict):
        raise LaunchEntryError("must be a table")
    unknown = sorted(set(entry) - KNOWN_KEYS)
    if unknown:
        raise LaunchEntryError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})")
    values: dict[str, Any] = {"key": key, "command": parse_command(entry.get("command")),
                              "cwd": parse_cwd(entry.get("cwd"), config_dir), "env": parse_env(entry.get("env", {})),
                              "restart": parse_choice("restart", entry, RESTART_POLICIES),
                              "after": parse_after(entry.get("after", [])), "name": parse_name(entry.get("name", key)),
                              "uuid": parse_uuid(entry.get("uuid")),
                              "stdin": parse_stdin(entry.get("stdin", PERIPHERAL_DEFAULTS["stdin"]))}
    values.update({name: parse_number(name, entry[name], *limits)
                   for name, limits in NUMBER_LIMITS.items() if name in entry})
    values.update({name: parse_int(name, entry[name], *limits) for name, limits in INT_LIMITS.items() if name in entry})
    return PeripheralSpec(**values)


def parse_command(value: Any) -> tuple[str, ...]:
    """A list of strings, or one string split like a shell would (no shell runs it)."""
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise LaunchEntryError(f"command cannot be split ({exc})") from None
    elif isinstance(value, list) and all(isinstance(word, str) for word in value):
        words = list(value)
    else:
        raise LaunchEntryError("command is required: a list of strings or one string")
    if not words or not words[0]:
        raise LaunchEntryError("command is empty")
    if any("\x00" in word for word in words):
        raise LaunchEntryError("command holds a NUL character")
    return tuple(words)


def parse_cwd(value: Any, config_dir: Path) -> str:
    """The working folder, relative to the config folder (default: the config folder itself)."""
    if value is None:
        return str(config_dir)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise LaunchEntryError("cwd must be a non-empty string")
    return str((config_dir / value).resolve())


def parse_env(value: Any) -> tuple[tuple[str, str], ...]:
    """Extra environment variables: names to strings (numbers and booleans are written as TOML shows them)."""
    if not isinstance(value, dict):
        raise LaunchEntryError("env must be a table of NAME = \"value\"")
    pairs = []
    for name, item in value.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise LaunchEntryError(f"env name {name!r} is not a valid variable name")
        if isinstance(item, bool):
            item = "true" if item else "false"
        if not isinstance(item, (str, int, float)) or "\x00" in str(item):
            raise LaunchEntryError(f"env {name} must be a string or a number")
        pairs.append((name, str(item)))
    return tuple(pairs)


def parse_choice(name: str, entry: dict[str, Any], choices: tuple[str, ...]) -> str:
    value = entry.get(name, PERIPHERAL_DEFAULTS[name])
    if value not in choices:
        raise LaunchEntryError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def parse_after(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise LaunchEntryError("after must be a list of peripheral keys")
    return tuple(dict.fromkeys(value))


def parse_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise LaunchEntryError("name must be the registration name: 1 to 128 characters, no whitespace")
    return value


def parse_uuid(value: Any) -> str | None:
    if value is None:
        return None
    if not is_uuid(value):
        raise LaunchEntryError(f"uuid {value!r} is not a uuid (36 hex digits and dashes)")
    return value


def parse_stdin(value: Any) -> str:
    for accepted, mode in STDIN_MODES.items():
        if value is accepted or (isinstance(value, str) and value == accepted):
            return mode
    raise LaunchEntryError(f"stdin must be true, false or \"pty\", not {value!r}")


def parse_number(name: str, value: Any, low: float, high: float) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not low <= value <= high:
        raise LaunchEntryError(f"{name} must be a number of seconds from {low:g} to {high:g}, not {value!r}")
    return float(value)


def parse_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LaunchEntryError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value
