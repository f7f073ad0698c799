"""The run folder (ipc sockets of the bus): private to the user who runs the instance, never squatted.

Sockets in the run folder need no token: whoever can reach them is the owner. So the folder must
be ours and 0700, and its path must not be predictable when it lives in /tmp. The supervisor
claims it (``claim_run_dir``); clients check it before they connect (``check_run_dir``).
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .settings import (PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, RUN_DIR_PREFIX, RUN_POINTER_FILE_NAME, ConfigError, Runtime,
                       in_config_run_dir)

log = logging.getLogger(__name__)


class UnsafeRunDir(ConfigError):
    """The run folder exists but is not ours, not 0700, or not a folder: refuse to use it."""


def check_run_dir(path: Path) -> None:
    """Raise UnsafeRunDir unless path is a real folder (not a symlink) owned by us with mode 0700."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise UnsafeRunDir(f"no run folder at {path}: the orchestrator is not running") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeRunDir(f"run folder {path} is not a folder (a symlink or a file): refusing to use it; remove it")
    if info.st_uid != os.getuid():
        raise UnsafeRunDir(f"run folder {path} belongs to uid {info.st_uid}, not to us (uid {os.getuid()}): "
                           f"another user may have created it to take our sockets over; refusing to use it")
    mode = stat.S_IMODE(info.st_mode)
    if mode != PRIVATE_DIR_MODE:
        raise UnsafeRunDir(f"run folder {path} has mode {mode:04o}, not {PRIVATE_DIR_MODE:04o}: "
                           f"others could replace its sockets; "
                           f"refusing to use it (chmod {PRIVATE_DIR_MODE:o} it or remove it)")


def ensure_private_dir(path: Path) -> None:
    """Create path 0700 if missing; an existing one must pass check_run_dir (never chmod what someone else made)."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        check_run_dir(path)
        return
    os.chmod(path, PRIVATE_DIR_MODE)  # ours, just created: only umask could have narrowed it


def ensure_runtime_dirs(runtime: Runtime) -> None:
    """Create the config and log folders; the run folder must be ours and 0700."""
    for folder in (runtime.config_dir, runtime.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(runtime.log_dir, PRIVATE_DIR_MODE)  # logs: owner only
    ensure_private_dir(runtime.run_dir)


def write_private_file(path: Path, text: str) -> None:
    """Replace path atomically with an owner-only (0600) file holding text."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def claim_run_dir(config_dir: Path) -> Path:
    """Supervisor only (holding the config folder's lock): the run folder this instance binds its sockets in.

    <config>/run when the socket paths fit (created 0700, or checked when it exists); otherwise a
    fresh tempfile.mkdtemp folder whose path goes to <config>/orch.run (0600) for our clients.
    """
    fitting = in_config_run_dir(config_dir)
    if fitting is not None:
        ensure_private_dir(fitting)
        return fitting
    remove_stale_run_dir(config_dir)
    run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
    write_private_file(config_dir / RUN_POINTER_FILE_NAME, str(run_dir))
    log.info("config path too long for ipc sockets: the run folder is %s (recorded in %s)", run_dir,
             RUN_POINTER_FILE_NAME)
    return run_dir


def remove_stale_run_dir(config_dir: Path) -> None:
    """The private folder of a previous run that was killed (we hold the lock: nobody uses it); only if it is ours."""
    try:
        recorded = Path((config_dir / RUN_POINTER_FILE_NAME).read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return
    if recorded.parent != Path(tempfile.gettempdir()) or not recorded.name.startswith(RUN_DIR_PREFIX):
        return
    try:
        check_run_dir(recorded)
    except UnsafeRunDir:
        return
    shutil.rmtree(recorded, ignore_errors=True)


def release_run_dir(config_dir: Path, run_dir: Path) -> None:
    """At a clean stop: remove a private temporary run folder and its record (the in-config one stays)."""
    if in_config_run_dir(config_dir) is not None:
        return
    pointer = config_dir / RUN_POINTER_FILE_NAME
    try:
        if pointer.read_text(encoding="utf-8").strip() == str(run_dir):
            pointer.unlink()
    except (OSError, UnicodeDecodeError):
        pass
    shutil.rmtree(run_dir, ignore_errors=True)
