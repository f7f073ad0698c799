"""Reading and writing orch.cf / routes.cf: validation on load, what cannot be used kept aside, atomic writes, backups.

orch.cf's last good copy is kept too.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.settings import (BACKUP_DIR_NAME, CONFIG_FILE_NAME, LOOPBACK_HOST, LOOPBACK_ONLY_SECURITY,
                             LOOPBACK_ONLY_KEY, PRIVATE_DIR_MODE, ROUTE_COUNTERS, ROUTES_FILE_NAME, SECURITY_KEYS,
                             Checked, ConfigError, SecurityConfigError, check_config, check_routes, default_config,
                             loopback_only_reason, require_secure)

log = logging.getLogger(__name__)

FILE_MODE = 0o600
CORRUPT_KIND = "corrupt"  # a file that is not JSON at all: <name>.corrupt-<time>
REJECTED_KIND = "rejected"  # keys and records validation could not use: <name>.rejected-<time>
# orch.cf as the state keeper last wrote it; its security keys survive a corrupt orch.cf
LAST_GOOD_SUFFIX = ".last-good"
LAST_GOOD_INTERVAL_S = 60.0  # refresh the last good copy at most this often unless a security key changed
# Fields the system maintains: a hand edit (or an editor's stale buffer) never rolls them back.
PERIPHERAL_MAINTAINED = ("last_seen", "online")
ROUTE_MAINTAINED = ("last_used", "rate", *ROUTE_COUNTERS)


Stamp = tuple[int, int, int]  # (inode, mtime in ns, size): changes when anyone rewrites or edits the file


def stamp_of(path: Path) -> Stamp | None:
    """The file's stamp, None when it is gone: a stat, cheap enough to poll."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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
        items = [f"{inner}{json.dumps(str(key), ensure_ascii=False)}: {readable_json(item, level + 1)}"
                 for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    return pretty_list([readable_json(item, level + 1) for item in value], level)


def pretty_list(rendered: list[str], level: int) -> str:
    """A list whose items are already rendered, one per line."""
    if not rendered:
        return "[]"
    inner, outer = INDENT * (level + 1), INDENT * level
    return "[\n" + ",\n".join(inner + item for item in rendered) + f"\n{outer}]"


def atomic_write_json(path: Path, data: Any, before_replace: Callable[[], None] | None = None) -> tuple[Stamp, str]:
    """Write JSON (readable_json) atomically; returns the file's stamp and text."""
    return atomic_write_text(path, readable_json(data) + "\n", before_replace)


def atomic_write_text(path: Path, text: str, before_replace: Callable[[], None] | None = None) -> tuple[Stamp, str]:
    """Write a file so that a reader (or a crash) only sees the old or the new one, whole; returns its stamp and text.

    ``before_replace`` runs just before the rename (the state keeper catches a hand edit it is about to replace).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            # before the rename: an edit landing right after it shows as a different stamp
            st = os.fstat(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return (st.st_ino, st.st_mtime_ns, st.st_size), text


def _aside_path(path: Path, kind: str) -> Path:
    """<name>.<kind>-<timestamp>, with a counter when that name is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{kind}-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{kind}-{stamp}-{counter}")
        counter += 1
    return target


def keep_aside(path: Path, reason: str) -> Path:
    """Rename a file we cannot use to <name>.corrupt-<timestamp> so the user's data is never lost."""
    target = _aside_path(path, CORRUPT_KIND)
    os.replace(path, target)
    log.error("%s is unusable (%s); kept aside as %s, starting from defaults", path, reason, target.name)
    return target


def write_rejected(path: Path, reasons: list[str], keys: dict[str, Any], records: list[Any], records_key: str) -> Path:
    """Save what validation could not use (keys as found, rejected records) in <name>.rejected-<time>, owner-only."""
    target = _aside_path(path, REJECTED_KIND)
    document: dict[str, Any] = {"file": path.name, "reasons": reasons}
    if keys:
        document["keys"] = keys
    if records:
        document[records_key] = records
    atomic_write_json(target, document)
    return target


def read_json_file(path: Path) -> Any:
    """The parsed file; ConfigError when it is not JSON (or not text)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not JSON: {exc}") from None


def preflight(config_dir: Path) -> str | None:
    """Before any actor starts: the message that stops the launch (an unreadable security key), or None.

    A missing or non-JSON orch.cf does not stop it: the state keeper handles those (defaults, last good copy,
    loopback only).
    """
    path = Path(config_dir) / CONFIG_FILE_NAME
    try:
        raw = read_json_file(path)
    except (OSError, ConfigError):
        return None
    if not isinstance(raw, dict):
        return None
    try:
        require_secure(check_config(raw))
    except SecurityConfigError as exc:
        return str(exc)
    return None


@dataclass
class OutsideEdit:
    """What a hand edit of the files means for the running state."""

    config: dict[str, Any] | None = None  # the merged orch.cf document, None when orch.cf was not edited
    routes: list[dict[str, Any]] | None = None  # the merged routes, None when routes.cf was not edited
    rewrite: bool = False  # an edit could not be used (or a file was removed): write the files from the running state


def merge_records(base: list[dict[str, Any]], theirs: list[dict[str, Any]], ours: list[dict[str, Any]],
                  rejected: list[Any], key: str, maintained: tuple[str, ...]) -> list[dict[str, Any]]:
    """Three-way merge of records by key: what the user added, changed or removed wins, except system-maintained fields.

    A record the user broke (kept aside as rejected) counts as unchanged, not as removed.
    """
    base_by = {record[key]: record for record in base}
    theirs_by = {record[key]: record for record in theirs}
    for entry in rejected:
        if isinstance(entry, dict) and entry.get(key) in base_by and entry[key] not in theirs_by:
            theirs_by[entry[key]] = base_by[entry[key]]
    merged = {record[key]: dict(record) for record in ours}
    for name, record in theirs_by.items():
        old = base_by.get(name)
        if old is None:
            running = merged.get(name, {})
            merged[name] = {**record, **{field: running[field] for field in maintained if field in running}}
        elif record != old and name in merged:
            current = merged[name]
            for field in set(record) | set(old):
                if field in maintained or record.get(field) == old.get(field):
                    continue
                if field in record:
                    current[field] = record[field]
                else:
                    current.pop(field, None)
    for name in base_by:
        if name not in theirs_by:
            merged.pop(name, None)
    return list(merged.values())


class ConfigStore:
    """The two JSON files of one config folder. Only the state keeper uses this class."""

    def __init__(self, config_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.config_dir = config_dir
        self.config_path = config_dir / CONFIG_FILE_NAME
        self.routes_path = config_dir / ROUTES_FILE_NAME
        self.last_good_path = config_dir / f"{CONFIG_FILE_NAME}{LAST_GOOD_SUFFIX}"
        self.backup_dir = config_dir / BACKUP_DIR_NAME
        self.clock = clock
        self.kept_aside: list[Path] = []  # whole files that were not JSON (.corrupt-*)
        self.rejected: list[Path] = []  # keys and records validation could not use (.rejected-*)
        # (logging level, line) about the load, logged once the activity log is up
        self.notes: list[tuple[int, str]] = []
        self.writes = 0
        self.last_good_security: dict[str, Any] | None = None
        # per file: its stamp and text as we last wrote (or read) it
        self.bases: dict[Path, tuple[Stamp | None, str]] = {}
        # per file: (base text, edit) of an edit our rename replaced
        self.late_edits: dict[Path, tuple[str, bytes]] = {}
        self.last_good_at: float | None = None
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
                 f"{pretty_list(rendered, 1) if key == 'peripherals' else readable_json(value, 1)}"
                 for key, value in config.items()]
        return "{\n" + ",\n".join(items) + "\n}\n" if items else "{}\n"

    def load(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Load both files: create missing ones, convert what reads unambiguously, keep aside what cannot be used."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config = self._load_config()
        routes = self._load_routes()
        return config, routes

    def _note(self, level: int, text: str) -> None:
        self.notes.append((level, text))

    def _write(self, path: Path, document: Any, text: str | None = None) -> None:
        """Write one of the two files (``text``: rendered) and remember it: the base of the next hand-edit merge."""
        rendered = text if text is not None else readable_json(document) + "\n"
        self.bases[path] = atomic_write_text(path, rendered, before_replace=lambda: self._catch_late_edit(path))

    def _read(self, path: Path) -> Any:
        """Parse one of the two files and keep it as the base (stamp first: a change while reading shows later)."""
        stamp = stamp_of(path)
        try:
            text = path.read_text(encoding="utf-8")
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not JSON: {exc}") from None
        self.bases[path] = (stamp, text)
        return raw

    def _load_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            config = default_config()
            self._note(logging.INFO, f"{self.config_path} not found; created with defaults")
            self._write(self.config_path, config)
            self.write_last_good(config)
            return config
        try:
            raw = self._read(self.config_path)
            if not isinstance(raw, dict):
                raise ConfigError(f"orch.cf must hold a JSON object, got {type(raw).__name__}")
        except ConfigError as exc:
            return self._replace_corrupt_config(str(exc))
        checked = check_config(raw)
        self._report(self.config_path, raw, checked, "peripherals")
        config = checked.value
        if LOOPBACK_ONLY_KEY in config and not loopback_only_reason(config):
            del config[LOOPBACK_ONLY_KEY]  # bind_host was fixed by hand
        if checked.insecure:
            config.update(self._security_fallback(list(checked.insecure)))
        else:
            self.write_last_good(config)
        return config

    def _load_routes(self) -> list[dict[str, Any]]:
        if not self.routes_path.exists():
            self._note(logging.INFO, f"{self.routes_path} not found; created empty")
            self._write(self.routes_path, [])
            return []
        try:
            raw = self._read(self.routes_path)
            if not isinstance(raw, list):
                raise ConfigError(f"routes.cf must hold a JSON list, got {type(raw).__name__}")
        except ConfigError as exc:
            self.kept_aside.append(keep_aside(self.routes_path, str(exc)))
            self._write(self.routes_path, [])
            return []
        checked = check_routes(raw)
        self._report(self.routes_path, raw, checked, "routes")
        return checked.value

    def _report(self, path: Path, raw: Any, checked: Checked, records_key: str) -> None:
        """One warning per conversion or reset; what could not be used goes to a .rejected file next to the file."""
        for line in checked.warnings:
            self._note(logging.WARNING, f"{path.name}: {line}")
        for reason in checked.insecure.values():
            self._note(logging.ERROR, f"{path.name}: {reason}")
        if checked.reset or checked.rejected or checked.insecure:
            # as found: the file is rewritten without them
            keys = {**checked.reset, **{key: raw[key] for key in checked.insecure}}
            target = write_rejected(path, checked.reasons + list(checked.insecure.values()), keys, checked.rejected,
                                    records_key)
            self.rejected.append(target)
            self._note(logging.WARNING, f"{path.name}: what could not be used is kept in {target.name}")

    def _replace_corrupt_config(self, reason: str) -> dict[str, Any]:
        """orch.cf is not a JSON object: keep it aside, start from defaults, never with more open security settings."""
        self.kept_aside.append(keep_aside(self.config_path, reason))
        config = default_config()
        config.update(self._security_fallback(list(SECURITY_KEYS)))
        self._write(self.config_path, config)
        return config

    def _security_fallback(self, keys: list[str]) -> dict[str, Any]:
        """Values for security keys that could not be read: the last good copy's, or loopback only if there is none."""
        last_good = self._read_last_good()
        if last_good is not None:
            self._note(logging.WARNING,
                       f"{', '.join(keys)} taken from {self.last_good_path.name}, the last copy the state keeper wrote")
            return {key: last_good[key] for key in keys}
        reason = (f"orch.cf's {', '.join(keys)} could not be read and there is no {self.last_good_path.name}: "
                  f"the command and data ports listen on {LOOPBACK_HOST} only until bind_host is set in orch.cf")
        self._note(logging.ERROR, reason)
        return {**{key: LOOPBACK_ONLY_SECURITY[key] for key in keys}, LOOPBACK_ONLY_KEY: reason}

    def _read_last_good(self) -> dict[str, Any] | None:
        """The security keys of the last good copy, or None when it is absent or itself unusable."""
        try:
            raw = read_json_file(self.last_good_path)
        except (OSError, ConfigError):
            return None
        if not isinstance(raw, dict):
            return None
        checked = check_config(raw)
        if checked.insecure:
            return None
        return {key: checked.value[key] for key in SECURITY_KEYS}

    def write_last_good(self, config: dict[str, Any]) -> None:
        """Keep orch.cf.last-good (owner-only): when security keys changed, else at most every LAST_GOOD_INTERVAL_S."""
        security = {key: config.get(key) for key in SECURITY_KEYS}
        now = self.clock()
        recent = self.last_good_at is not None and now - self.last_good_at < LAST_GOOD_INTERVAL_S
        if security == self.last_good_security and recent:
            return
        try:
            atomic_write_json(self.last_good_path, config)
        except OSError as exc:
            log.error("could not write %s: %s", self.last_good_path, exc)
            return
        self.last_good_security = security
        self.last_good_at = now

    def save(self, config: dict[str, Any], routes: list[dict[str, Any]], changed: set[str] | None = None) -> None:
        """Write both files atomically (and the last good copy of orch.cf when due).

        ``changed``: uuids of the peripherals changed since the last save (None: any); only those are rendered again.
        """
        self._write(self.config_path, config, self.config_text(config, changed))
        self._write(self.routes_path, routes)
        self.writes += 1
        self.write_last_good(config)

    # ---- hand edits while running -------------------------------------------------------------
    def edited_outside(self) -> list[Path]:
        """Files changed (or removed) by someone else since we last wrote or read them, or with an edit we caught."""
        return [path for path in (self.config_path, self.routes_path)
                if path in self.late_edits or (path in self.bases and stamp_of(path) != self.bases[path][0])]

    def merge_outside_edits(self, ours_config: dict[str, Any], ours_routes: list[dict[str, Any]]) -> OutsideEdit:
        """Validate each edited file and merge it three ways (base: what we last wrote; ours: the running state)."""
        edit = OutsideEdit()
        for path in (self.config_path, self.routes_path):
            late = self.late_edits.pop(path, None)
            if late is not None:  # landed between our last check and our rename: merged against the base it was made on
                self._merge_one(path, late[0], late[1], edit, ours_config, ours_routes)
            if path not in self.bases or stamp_of(path) == self.bases[path][0]:
                continue
            stamp = stamp_of(path)
            try:
                data = path.read_bytes()
            except OSError:
                data = None
            if stamp is None or data is None:
                self._note(logging.WARNING, f"{path.name} was removed by hand; written again from the running state")
                edit.rewrite = True
                continue
            base_text = self.bases[path][1]
            self.bases[path] = (stamp, base_text)  # seen: not merged again at the next poll
            if self._merge_one(path, base_text, data, edit, ours_config, ours_routes):
                self.bases[path] = (stamp, data.decode("utf-8"))
        return edit

    def _merge_one(self, path: Path, base_text: str, data: bytes, edit: OutsideEdit, ours_config: dict[str, Any],
                   ours_routes: list[dict[str, Any]]) -> bool:
        """Merge one edited version of a file into ``edit``; False if it does not parse (kept aside, rewrite asked)."""
        try:
            raw = json.loads(data.decode("utf-8"))
            if not isinstance(raw, dict if path == self.config_path else list):
                raise ValueError(f"it must hold a JSON {'object' if path == self.config_path else 'list'}")
        except (UnicodeDecodeError, ValueError) as exc:
            self._keep_unusable_edit(path, data, str(exc))
            edit.rewrite = True
            return False
        base = json.loads(base_text)
        if path == self.config_path:
            edit.config = self._merge_config(base, raw, edit.config if edit.config is not None else ours_config)
        else:
            edit.routes = self._merge_routes(base, raw, edit.routes if edit.routes is not None else ours_routes)
        return True

    def _catch_late_edit(self, path: Path) -> None:
        """Just before our rename: an edit made since our last check would be replaced; keep it for the next check."""
        base = self.bases.get(path)
        if base is None or stamp_of(path) in (None, base[0]):
            return
        try:
            self.late_edits[path] = (base[1], path.read_bytes())
        except OSError:
            return

    def _keep_unusable_edit(self, path: Path, data: bytes, reason: str) -> None:
        """An edit that does not parse: its bytes go to <name>.rejected-<time> (none lost); the file is rewritten."""
        target = _aside_path(path, REJECTED_KIND)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            self._note(logging.ERROR,
                       f"{path.name} was edited by hand but cannot be used ({reason}) nor kept aside ({exc})")
            return
        self.rejected.append(target)
        self._note(logging.ERROR,
                   f"{path.name} was edited by hand but cannot be used ({reason}); kept as {target.name}, "
                                  f"the file is written again from the running state")

    def _merge_config(self, base_raw: Any, raw: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
        """Keys the user changed win (an unreadable security key never does); peripherals merge record by record."""
        checked = check_config(raw)
        self._report(self.config_path, raw, checked, "peripherals")
        theirs = checked.value
        base = check_config(base_raw).value if isinstance(base_raw, dict) else dict(ours)
        merged = dict(ours)
        for key, value in theirs.items():
            if key != "peripherals" and key in raw and key not in checked.insecure and value != base.get(key):
                merged[key] = value
        if LOOPBACK_ONLY_KEY in merged and not loopback_only_reason(merged):
            del merged[LOOPBACK_ONLY_KEY]  # bind_host was fixed by hand
        if "peripherals" in raw:
            merged["peripherals"] = merge_records(base["peripherals"], theirs["peripherals"], ours["peripherals"],
                                                  checked.rejected, "uuid", PERIPHERAL_MAINTAINED)
        return merged

    def _merge_routes(self, base_raw: Any, raw: list[Any], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
        checked = check_routes(raw)
        self._report(self.routes_path, raw, checked, "routes")
        base = check_routes(base_raw).value if isinstance(base_raw, list) else list(ours)
        return merge_records(base, checked.value, ours, checked.rejected, "name", ROUTE_MAINTAINED)

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
