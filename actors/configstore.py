"""Reading and writing orch.cf / routes.cf: atomic writes, corrupt files kept aside, backups."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .settings import BACKUP_DIR_NAME, CONFIG_FILE_NAME, PRIVATE_DIR_MODE, ROUTES_FILE_NAME, ConfigError, default_config, validate_config, validate_routes

log = logging.getLogger(__name__)

FILE_MODE = 0o600
INDENT = "    "
# Containers this many levels deep or deeper are written on one line: orch.cf has a line per setting and per peripheral,
# routes.cf a line per field of each route; a deep peripheral config costs no indentation, and a save with thousands of
# peripherals costs about what compact JSON costs (bench/state_bench.py).
PRETTY_LEVELS = 2
ONE_LINE_SEPARATORS = (", ", ": ")
PERIPHERAL_LEVEL = 2  # orch.cf -> "peripherals" -> one peripheral


def readable_json(value: Any, level: int = 0) -> str:
    """JSON with the top PRETTY_LEVELS levels indented and everything below on one line (still plain JSON)."""
    if level >= PRETTY_LEVELS or not isinstance(value, (dict, list)) or not value:
        return json.dumps(value, ensure_ascii=False, separators=ONE_LINE_SEPARATORS)
    inner, outer = INDENT * (level + 1), INDENT * level
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(str(key), ensure_ascii=False)}: {readable_json(item, level + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    return pretty_list([readable_json(item, level + 1) for item in value], level)


def pretty_list(rendered: list[str], level: int) -> str:
    """A list whose items are already rendered, one per line."""
    if not rendered:
        return "[]"
    inner, outer = INDENT * (level + 1), INDENT * level
    return "[\n" + ",\n".join(inner + item for item in rendered) + f"\n{outer}]"


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) only ever sees the old or the new file, whole."""
    atomic_write_text(path, readable_json(data) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that a reader (or a crash) only ever sees the old or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def keep_aside(path: Path, reason: str) -> Path:
    """Rename a file we cannot use to <name>.corrupt-<timestamp> so the user's data is never lost."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    os.replace(path, target)
    log.error("%s is unusable (%s); kept aside as %s, starting from defaults", path, reason, target.name)
    return target


class ConfigStore:
    """The two JSON files of one config folder. Only the state keeper uses this class."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.config_path = config_dir / CONFIG_FILE_NAME
        self.routes_path = config_dir / ROUTES_FILE_NAME
        self.backup_dir = config_dir / BACKUP_DIR_NAME
        self.kept_aside: list[Path] = []
        self.writes = 0
        self.peripheral_lines: dict[str, str] = {}  # uuid -> its line in orch.cf as last written

    def config_text(self, config: dict[str, Any], changed: set[str] | None = None) -> str:
        """orch.cf's text; only the peripherals in `changed` (all when None) are rendered again, so a save costs
        about the same with 10 or 4,000 peripherals (a registration flood does not slow the state keeper down)."""
        lines: dict[str, str] = {}
        rendered = []
        for peripheral in config.get("peripherals", []):
            uuid = peripheral.get("uuid")
            line = self.peripheral_lines.get(uuid) if changed is not None and uuid not in changed else None
            if line is None:
                line = readable_json(peripheral, PERIPHERAL_LEVEL)
            lines[uuid] = line
            rendered.append(line)
        self.peripheral_lines = lines
        items = [f"{INDENT}{json.dumps(str(key), ensure_ascii=False)}: "
                 f"{pretty_list(rendered, 1) if key == 'peripherals' else readable_json(value, 1)}" for key, value in config.items()]
        return "{\n" + ",\n".join(items) + "\n}\n" if items else "{}\n"

    def load(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Load both files, creating missing ones and setting corrupt ones aside."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config = self._load_one(self.config_path, validate_config, default_config)
        routes = self._load_one(self.routes_path, validate_routes, list)
        return config, routes

    def _load_one(self, path: Path, validate: Callable[[Any], Any], make_default: Callable[[], Any]) -> Any:
        if not path.exists():
            value = make_default()
            log.info("%s not found; created with defaults", path)
            atomic_write_json(path, value)
            return value
        try:
            return validate(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, ConfigError) as exc:
            self.kept_aside.append(keep_aside(path, str(exc)))
            value = make_default()
            atomic_write_json(path, value)
            return value

    def save(self, config: dict[str, Any], routes: list[dict[str, Any]], changed: set[str] | None = None) -> None:
        """Write both files atomically; `changed`: the uuids of the peripherals changed since the last save (None: any)."""
        atomic_write_text(self.config_path, self.config_text(config, changed))
        atomic_write_json(self.routes_path, routes)
        self.writes += 1

    def backup(self) -> Path:
        """Copy both files into backups/<timestamp>/ (before a reset) and return that folder."""
        target = self.backup_dir / time.strftime("%Y%m%d-%H%M%S")
        counter = 1
        while target.exists():
            target = self.backup_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{counter}"
            counter += 1
        target.mkdir(parents=True)
        for folder in (self.backup_dir, target):  # copies of the config (and its token): owner only
            os.chmod(folder, PRIVATE_DIR_MODE)
        for path in (self.config_path, self.routes_path):
            if path.exists():
                shutil.copy2(path, target / path.name)
        return target
