"""The launch.py side of robot bring-up: `peripheral start|stop|restart|list [<name>]`, `logs <name> [-f] [-n N]`,
and the peripheral lines of `status`.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Callable

from ..core.durations import short_duration
from ..core.errors import BadArguments, OrchestratorError, UnknownPeripheral
from .launchfile import INT_LIMITS, KEY_PATTERN
from ..core.settings import PERIPHERAL_LOG_DIR_NAME, Runtime

FOLLOW_POLL_S = 0.2
FOLLOW_CHUNK_BYTES = 65536
DEFAULT_TAIL_LINES = 20
PERIPHERAL_ACTIONS = ("list", "start", "stop", "restart")
MAX_LOG_BACKUPS = INT_LIMITS["log_backups"][1]  # the most rotated files a launch entry may keep


def format_uptime(seconds: float | None) -> str:
    return short_duration(seconds) or "-"


def registration_text(row: dict[str, Any]) -> str:
    """registered as <name> | online (an earlier run) | NOT REGISTERED after start_timeout | not registered."""
    if row.get("registered"):
        return f"registered as {row.get('peripheral')}"
    if row.get("not_registered"):
        return f"NOT REGISTERED (as {row.get('registers_as')})"
    if row.get("online"):
        return f"{row.get('peripheral')} online, not since this start"
    return "not registered"


def peripheral_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per launched peripheral: process state joined with registration."""
    lines = []
    for row in rows:
        code = "-" if row.get("last_exit") is None else str(row["last_exit"])
        pid = str(row.get("pid") or "-")
        lines.append(f"  {row['name']:<12} {row['state']:<8} pid {pid:<8} restarts {row.get('restarts', 0):<3} "
                     f"up {format_uptime(row.get('uptime_s')):<7} last exit {code:<4} {registration_text(row)}")
    return lines


def print_peripherals(status: dict[str, Any]) -> None:
    """The `launch.py status` section for launched peripherals (nothing when there is no launch file)."""
    rows = status.get("peripherals") or []
    problems = status.get("launch_problems") or []
    if rows:
        print("peripherals (peripherals.toml):")
        for line in peripheral_lines(rows):
            print(line)
    for problem in problems:
        print(f"  WARNING: {problem}")


def run_peripheral_command(request: Callable[..., Any], action: str, name: str | None) -> int:
    """`launch.py peripheral <action> [<name>]` through the supervisor's control socket."""
    try:
        result = request(action=action, name=name)
    except (BadArguments, UnknownPeripheral) as exc:
        print(exc, file=sys.stderr)
        return 2
    if action == "list":
        rows = result.get("peripherals") or []
        print("\n".join(peripheral_lines(rows)) if rows else "no launched peripherals (no entries in peripherals.toml)")
        for problem in result.get("problems") or []:
            print(f"  WARNING: {problem}")
        return 0
    for line in result.get("done") or []:
        print(line)
    return 0


def log_path(runtime: Runtime, name: str) -> Path:
    if not KEY_PATTERN.match(name):
        raise ValueError(f"{name!r} is not a peripheral key of peripherals.toml")
    return runtime.log_dir / PERIPHERAL_LOG_DIR_NAME / f"{name}.log"


def show_logs(runtime: Runtime, name: str, follow: bool, lines: int, out: IO[str] = sys.stdout) -> int:
    """The last `lines` lines of a peripheral's log, then (with follow) what it writes next, across rotations."""
    try:
        path = log_path(runtime, name)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not path.exists():
        print(f"no log for {name} in {path.parent}", file=sys.stderr)
        return 1
    with open(path, "rb") as handle:
        for line in deque(handle, maxlen=max(lines, 0)):
            out.write(line.decode("utf-8", "replace"))
        out.flush()
        if follow:
            try:
                follow_file(path, handle, out)
            except KeyboardInterrupt:
                pass
    return 0


def follow_file(path: Path, handle: IO[bytes], out: IO[str]) -> None:
    """Print what is appended; across a rotation (another inode) nothing is lost while the rotated files are kept:
    the rest of the file we had open, then every file rotated out after it, oldest first, then the new one."""
    inode = os.fstat(handle.fileno()).st_ino
    while True:
        if copy_out(handle, out):
            continue
        time.sleep(FOLLOW_POLL_S)
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_ino != inode:
            copy_out(handle, out)  # written before the rotation, after our last read: still readable through our handle
            handle.close()
            for backup in rotated_after(path, inode):
                try:
                    with open(backup, "rb") as older:
                        copy_out(older, out)
                except FileNotFoundError:
                    pass  # rotated away while we looked: gone, as a rotation past log_backups is
        elif info.st_size >= handle.tell():
            continue
        else:
            handle.close()  # cut in place: read it again from its start
        handle = open(path, "rb")
        inode = os.fstat(handle.fileno()).st_ino


def copy_out(handle: IO[bytes], out: IO[str]) -> bool:
    """Print what the handle has left; whether there was anything."""
    copied = False
    while chunk := handle.read(FOLLOW_CHUNK_BYTES):
        out.write(chunk.decode("utf-8", "replace"))
        copied = True
    if copied:
        out.flush()
    return copied


def rotated_after(path: Path, inode: int) -> list[Path]:
    """The rotated files (<name>.1, .2, ...) newer than the one with this inode, oldest first (all of them when it
    is gone)."""
    newer = []
    for index in range(1, MAX_LOG_BACKUPS + 1):
        backup = path.with_name(f"{path.name}.{index}")
        try:
            if backup.stat().st_ino == inode:
                break
        except FileNotFoundError:
            break
        newer.append(backup)
    return newer[::-1]


def ui_local_command(line: str, control: Callable[..., Any]) -> str | None:
    """The UI's own commands, matched before the gateway's: `:send <name> <text>` writes a line to a peripheral's stdin,
    `:logs <name>` shows its last lines. None: not one of them (the line goes to the gateway)."""
    words = line.strip().split(None, 2)
    if not words or words[0] not in ("/send", "/logs"):
        return None
    try:
        if words[0] == "/logs":
            if len(words) != 2:
                return "Usage: :logs <name>"
            tail = control(action="tail", name=words[1]).get("lines") or []
            return "\n".join(tail) or f"(nothing logged by {words[1]} yet)"
        if len(words) < 3:
            return "Usage: :send <name> <text>"
        control(action="send", name=words[1], text=words[2])
    except OrchestratorError as exc:
        return f"Error: {exc}"
    return f"Sent to {words[1]}: {words[2]}"
