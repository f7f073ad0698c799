"""Robot bring-up: the supervisor starts the peripherals of ``peripherals.toml`` and keeps them running.

Peripherals are not actors: they stay off the bus and speak only the legacy protocol, so an
unmodified program works. Each runs in its own process group (its forked children belong to it):
a stop sends SIGTERM to the group, then SIGKILL after ``stop_timeout``; a leader that exits on its
own takes what is left of its group with it. A crash is restarted with exponential backoff; a
peripheral that crashes ``flap_limit`` times within ``flap_window`` is left failed until started by
hand. The group watchdog (groupwatch.py) ends every group if the supervisor itself dies.

Join with protocol state: a launched peripheral is the registered one with its ``uuid`` when the
entry gives one, else the one registered under ``name`` or ``name_<N>`` (the suffix a registration
gets when the name is taken), the online and most recently seen first. It counts as registered once
that record is online and was seen after the current process started.
"""
from __future__ import annotations

import logging
import os
import pty
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable

import zmq

from ..core.errors import BadArguments, UnknownPeripheral
from .launchfile import LaunchFile, PeripheralSpec, launch_file_path, read_launch_file
from ..core.filewatch import FolderWatch
from ..core.follower import SyncReplicaFollower
from ..core.settings import (LAUNCH_FILE_POLL_S, PERIPHERAL_LOG_DIR_NAME, PERIPHERAL_TAIL_LINES, PRIVATE_FILE_MODE,
                             Runtime)

log = logging.getLogger("peripherals")

REPO_ROOT = Path(__file__).resolve().parents[2]  # actors/supervisor/ -> the checkout
READ_CHUNK_BYTES = 65536
MAX_DOUBLINGS = 20  # keeps 2**n small; backoff_max caps the delay long before
CLOSE_POLL_S = 0.05
MAX_SEND_BYTES = 65536  # one :send line
ACTIONS = ("list", "start", "stop", "restart", "send", "tail")
WATCHDOG_RETRY_S = 5.0  # a watchdog that cannot be started (no memory, no processes left) is tried again this often
# A stopping group whose leader is gone: its other members are not our children, so no SIGCHLD says when they have
# left; looked at this often until they have, or until stop_deadline (the stop's own bound) kills them.
GROUP_FINISH_POLL_S = 0.25
REPLY_CACHE_SIZE = 64  # a client's resent request (same req_id) gets the first answer: a line is never sent twice
BEAT_ERROR_CHARS = 160  # why a program cannot start, as a heartbeat row carries it (launch.py status has it whole)


# ---- logs ---------------------------------------------------------------------------
class LogWriter:
    """<logs>/peripherals/<key>.log, rotated to .1 .. .N at max_bytes; the last lines kept for the UI."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.tail: deque[str] = deque(maxlen=PERIPHERAL_TAIL_LINES)
        self.partial = b""
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self._open()

    def _open(self) -> IO[bytes]:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
        return os.fdopen(fd, "ab", buffering=0)

    def write(self, data: bytes) -> None:
        """Append, rotating first whenever the piece would take the file past max_bytes (so no file is larger)."""
        with self.lock:
            self._keep_tail(data)
            while data:
                if self.handle.tell() >= self.max_bytes:
                    self._rotate()
                room = self.max_bytes - self.handle.tell()
                self.handle.write(data[:room])
                data = data[room:]

    def note(self, text: str) -> None:
        """A line of the supervisor's own in its log (started, exited, killed); a full disk never stops supervision."""
        try:
            self.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode())
        except (OSError, ValueError) as exc:
            log.debug("cannot write to %s: %s", self.path, exc)

    def _keep_tail(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-READ_CHUNK_BYTES:]
        self.tail.extend(line.decode("utf-8", "replace").rstrip("\r") for line in lines[-PERIPHERAL_TAIL_LINES:])

    def _rotate(self) -> None:
        self.handle.close()
        for index in range(self.backups, 0, -1):
            source = self.path if index == 1 else self.path.with_name(f"{self.path.name}.{index - 1}")
            if source.exists():
                os.replace(source, self.path.with_name(f"{self.path.name}.{index}"))
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        self.handle = self._open()

    def close(self) -> None:
        with self.lock:
            self.handle.close()


def pump(fd: int, writer: LogWriter) -> None:
    """Copy a peripheral's output into its log until end of file (a pty ends with EIO instead)."""
    while True:
        try:
            data = os.read(fd, READ_CHUNK_BYTES)
        except OSError:
            break
        if not data:
            break
        try:
            writer.write(data)
        except (OSError, ValueError):
            break  # the log closed under us (shutdown) or the disk is full: the peripheral keeps running
    try:
        os.close(fd)
    except OSError:
        pass


# ---- process groups -----------------------------------------------------------------
def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc; a killpg probe where there is no /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return [pgid] if signal_group(pgid, 0) else []
    members = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            members.append(int(name))
    return members


def signal_group(pgid: int, signum: int) -> bool:
    """True when the group existed."""
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# ---- one peripheral ------------------------------------------------------------------
@dataclass
class Launched:
    """A launch-file entry and its process bookkeeping."""

    spec: PeripheralSpec
    log: LogWriter
    process: subprocess.Popen | None = None
    pgid: int | None = None
    input_fd: int | None = None
    input_owned: bool = False  # a pty's duplicate descriptor: ours to close (a pipe belongs to its Popen)
    started_at: float = 0.0  # wall clock, compared with the keeper's last_seen
    started_mono: float = 0.0
    restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    next_start: float = 0.0
    failed: bool = False
    held: bool = False  # stopped by hand, or exited under its restart policy: not started again by itself
    gate_open: bool = False  # started once: restarts do not wait for `after` again
    waiting_since: float = field(default_factory=time.monotonic)
    stop_deadline: float | None = None  # stopping: SIGKILL at this time (monotonic)
    then: str = "hold"  # after a stop: "hold", "start" (restart) or "remove"
    last_exit: int | None = None
    exits: int = 0
    flagged: bool = False  # running past start_timeout without registering
    spawn_error: str = ""

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def state(self, now: float) -> str:
        if self.stop_deadline is not None:
            return "stopping"
        if self.alive:
            return "running"
        if self.failed:
            return "failed"
        if self.held:
            return "stopped"
        if not self.gate_open:
            return "waiting"
        return "backoff" if self.next_start > now else "starting"


def join_record(spec: PeripheralSpec, peripherals: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """This entry's registered record: by uuid if given, else by name or name_<N> (online, then latest seen, first)."""
    if spec.uuid:
        return next((p for p in peripherals if p.get("uuid") == spec.uuid), None)
    suffixed = re.compile(re.escape(spec.name) + r"_\d+")
    candidates = [p for p in peripherals if p.get("name") == spec.name or suffixed.fullmatch(str(p.get("name")))]
    return max(candidates, key=lambda p: (bool(p.get("online")), p.get("last_seen") or 0.0), default=None)


# ---- the manager ---------------------------------------------------------------------
class PeripheralManager:
    """Owned by the Supervisor: ``tick()`` from its loop, ``control()`` from its control socket, ``close()`` last."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.path = launch_file_path(runtime.config_dir)
        self.log_dir = runtime.log_dir / PERIPHERAL_LOG_DIR_NAME
        self.entries: dict[str, Launched] = {}
        self.problems: list[str] = []
        self.file_stamp: tuple[int, int, int] | None = None
        self.next_file_check = 0.0
        # An edit of the launch file wakes the supervisor; it never polls for one while the kernel can tell it.
        self.file_watch = FolderWatch(runtime.config_dir, (self.path.name,), LAUNCH_FILE_POLL_S)
        self.context: zmq.Context | None = None
        self.follower: SyncReplicaFollower | None = None
        self.watchdog: subprocess.Popen | None = None
        self.groups: set[int] = set()
        self.closing = False
        self.watchdog_retry_at = 0.0
        self.answered: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # ---- lifecycle ---------------------------------------------------------------
    def open(self, context: zmq.Context) -> None:
        self.context = context
        self.check_file(force=True)

    def file_event(self) -> None:
        """The folder watch is readable: empty it now (so the loop sleeps again); tick() looks at the file."""
        if self.file_watch.drain():
            self.next_file_check = 0.0

    def tick(self) -> None:
        """One pass from the supervisor's loop: never blocks."""
        now = time.monotonic()
        if now >= self.next_file_check:
            self.check_file()
        if self.follower is not None:
            self.follower.poll()  # even with no entries left: its sockets wake the loop until they are read
        if not self.entries:
            return
        self._keep_watchdog()
        for entry in list(self.entries.values()):
            self._step(entry, now)

    @property
    def sockets(self) -> tuple[zmq.Socket, ...]:
        """For the supervisor's poller once tick() runs (it reads them): a state update wakes the loop at once."""
        return self.follower.sockets if self.follower is not None else ()

    def next_due(self, now: float) -> float | None:
        """Seconds until tick() has timed work to do (0: now), None when nothing is timed.

        Everything else reaches tick() as an event that wakes the supervisor: an exit (SIGCHLD; peripherals and the
        watchdog are its children), a registration (the follower's sockets), a request, an edit of the launch file.
        """
        due = [self.next_file_check]
        if self.follower is not None and (wait := self.follower.due_in()) is not None:
            due.append(now + wait)
        if self.entries and (self.watchdog is None or self.watchdog.returncode is not None):
            due.append(self.watchdog_retry_at)
        due += [at for entry in self.entries.values() if (at := self._entry_due(entry, now)) is not None]
        return max(0.0, min(due) - now)

    def _entry_due(self, entry: Launched, now: float) -> float | None:
        """When _step has something to do for this entry unprompted (monotonic), None when only an event can."""
        if entry.alive:
            if entry.stop_deadline is not None:  # SIGKILL then; a leader that outlives even that is looked at again
                return entry.stop_deadline if now < entry.stop_deadline else now + GROUP_FINISH_POLL_S
            if not entry.flagged and not self.registered(entry):
                return entry.started_mono + entry.spec.start_timeout  # flagged NOT REGISTERED then
            return None
        if entry.pgid is not None:  # stopping, the leader gone, the rest of its group still finishing
            return min(now + GROUP_FINISH_POLL_S, entry.stop_deadline or now)
        if self.closing or entry.held or entry.failed:
            return None
        return max(entry.next_start, self._gate_due(entry))

    def _gate_due(self, entry: Launched) -> float:
        """When `after` stops holding the first start back: at once when open (or nothing pending), else its
        start_timeout (a registration of what it waits for wakes the loop sooner)."""
        if entry.gate_open or all(d not in self.entries or self.registered(self.entries[d]) for d in entry.spec.after):
            return 0.0
        return entry.waiting_since + entry.spec.start_timeout

    def close(self) -> None:
        """Stop every peripheral (SIGTERM to each group, SIGKILL after its stop_timeout), then the watchdog."""
        self.closing = True
        for entry in list(self.entries.values()):
            entry.held = True
            if entry.alive and entry.stop_deadline is None:
                self._begin_stop(entry, "hold")
        give_up = time.monotonic() + max((e.spec.stop_timeout for e in self.entries.values()), default=0.0) + 1.0
        while any(e.pgid is not None for e in self.entries.values()) and time.monotonic() < give_up:
            for entry in list(self.entries.values()):
                self._step(entry, time.monotonic())
            time.sleep(CLOSE_POLL_S)
        for entry in list(self.entries.values()):
            if entry.pgid is not None:
                signal_group(entry.pgid, signal.SIGKILL)
            entry.log.close()
        if self.follower is not None:
            self.follower.close()
        self.file_watch.close()
        if self.watchdog is not None and self.watchdog.stdin is not None:
            self.watchdog.stdin.close()  # end of file: the watchdog ends what may be left and exits
            try:
                self.watchdog.wait(timeout=CLOSE_POLL_S * 40)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()

    # ---- the launch file ---------------------------------------------------------
    def check_file(self, force: bool = False) -> None:
        """Stat the launch file (when the folder watch says so, or its poll is due); a change is applied without
        touching unchanged entries."""
        self.next_file_check = time.monotonic() + self.file_watch.poll_s
        try:
            info = self.path.stat()
            stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = None
        if stamp == self.file_stamp and not force:
            return
        self.file_stamp = stamp
        launch = read_launch_file(self.runtime.config_dir) if stamp is not None else LaunchFile()
        if launch is None:
            launch = LaunchFile()
        self.problems = list(launch.problems)
        for problem in launch.problems:
            log.error("launch file: %s", problem)
        unreadable = any("not valid TOML" in p or "cannot be read" in p for p in launch.problems)
        if unreadable and not launch.peripherals and self.entries:
            log.error("launch file unusable: the %d running peripherals are kept as they are", len(self.entries))
            return
        self.apply(launch.peripherals)

    def apply(self, wanted: dict[str, PeripheralSpec]) -> None:
        """Added entries start, removed ones stop, a changed command (cwd, env, stdin) restarts.

        Other changes only take new settings.
        """
        for key, entry in list(self.entries.items()):
            if key not in wanted:
                log.info("launch file: %s removed; stopping it", key)
                self._remove(entry)
        for key, spec in wanted.items():
            entry = self.entries.get(key)
            if entry is None:
                try:
                    writer = LogWriter(self.log_dir / f"{key}.log", spec.log_max_bytes, spec.log_backups)
                except OSError as exc:
                    self.problems.append(f"peripherals.{key}: cannot open its log in {self.log_dir} "
                                         f"({exc.strerror}); not started")
                    log.error("launch file: %s", self.problems[-1])
                    continue
                self.entries[key] = Launched(spec=spec, log=writer)
                log.info("launch file: %s added (%s)", key, shlex.join(spec.command))
            elif entry.spec.process_identity() != spec.process_identity():
                log.info("launch file: %s changed (%s); restarting it", key, shlex.join(spec.command))
                entry.spec = spec
                self._restart(entry)
            else:
                entry.spec = spec
                entry.log.max_bytes, entry.log.backups = spec.log_max_bytes, spec.log_backups
            if entry is not None and entry.then == "remove":  # removed, then back before its stop finished
                entry.then = "start"
        if self.entries and self.follower is None and self.context is not None:
            self.follower = SyncReplicaFollower(self.context, self.runtime.endpoints)

    # ---- one step ----------------------------------------------------------------
    def _step(self, entry: Launched, now: float) -> None:
        if entry.process is not None and entry.process.poll() is not None:
            self._on_exit(entry, now)
        if entry.process is None and entry.pgid is not None:
            self._finish_group(entry, now)
            return
        if entry.alive:
            self._watch_running(entry, now)
        elif (entry.pgid is None and not self.closing and not entry.held and not entry.failed
              and now >= entry.next_start and self._may_start(entry, now)):
            self._spawn(entry)

    def _watch_running(self, entry: Launched, now: float) -> None:
        if entry.stop_deadline is not None:
            if now >= entry.stop_deadline:
                self._kill_group(entry, "did not stop")
            return
        registered = self.registered(entry)
        if not entry.flagged and not registered and now - entry.started_mono > entry.spec.start_timeout:
            entry.flagged = True
            log.warning("%s runs (pid %d) but has not registered as %s within %.0fs", entry.key, entry.process.pid,
                        entry.spec.uuid or entry.spec.name, entry.spec.start_timeout)
        elif entry.flagged and registered:
            entry.flagged = False
            log.info("%s registered after %.1fs", entry.key, now - entry.started_mono)

    def _may_start(self, entry: Launched, now: float) -> bool:
        """`after`: start when those have registered, or once start_timeout has passed waiting for them."""
        if entry.gate_open:
            return True
        pending = [d for d in entry.spec.after if d in self.entries and not self.registered(self.entries[d])]
        if pending and now - entry.waiting_since < entry.spec.start_timeout:
            return False
        if pending:
            log.warning("%s: starting without %s (not registered within %.0fs)", entry.key, ", ".join(pending),
                        entry.spec.start_timeout)
        return True

    def _on_exit(self, entry: Launched, now: float) -> None:
        """The leader exited: what is left of its group goes too; then hold, remove, or restart with backoff."""
        code = entry.process.returncode
        ran_for = now - entry.started_mono
        self._close_input(entry)
        entry.process = None
        entry.last_exit = code
        entry.exits += 1
        entry.flagged = False
        entry.log.note(f"exited with code {code} after {ran_for:.1f}s")
        if entry.stop_deadline is not None:
            return  # _finish_group waits for the rest of the group until stop_deadline
        if entry.pgid is not None:
            self._kill_group(entry, "outlived its leader")
        self._after_crash(entry, code, ran_for, now)

    @staticmethod
    def _close_input(entry: Launched) -> None:
        if entry.input_owned and entry.input_fd is not None:
            os.close(entry.input_fd)
        elif entry.process is not None and entry.process.stdin is not None:
            try:
                entry.process.stdin.close()
            except OSError:
                pass  # the reader is gone: nothing to flush
        entry.input_fd, entry.input_owned = None, False

    def _after_crash(self, entry: Launched, code: int | None, ran_for: float, now: float) -> None:
        spec = entry.spec
        if spec.restart == "never" or (spec.restart == "on-failure" and code == 0):
            entry.held = True
            log.info("%s exited with code %s after %.1fs; not restarted (restart = %s)", entry.key, code, ran_for,
                     spec.restart)
            return
        if ran_for >= spec.stable_after:
            entry.crash_times.clear()
        entry.crash_times = [t for t in entry.crash_times if now - t < spec.flap_window] + [now]
        if len(entry.crash_times) >= spec.flap_limit:
            entry.failed = True
            log.error("%s crashed %d times within %.0fs; left stopped "
                      "(see logs/%s/%s.log; `launch.py peripheral start %s`)", entry.key, len(entry.crash_times),
                      spec.flap_window, PERIPHERAL_LOG_DIR_NAME, entry.key, entry.key)
            entry.log.note("failed: crashing too often, left stopped")
            return
        delay = min(spec.backoff_max, spec.backoff * 2 ** min(len(entry.crash_times) - 1, MAX_DOUBLINGS))
        entry.next_start = now + delay
        log.warning("%s exited with code %s after %.1fs; restarting in %.1fs", entry.key, code, ran_for, delay)

    def _finish_group(self, entry: Launched, now: float) -> None:
        """Stopping and the leader is gone: wait for the rest of the group until stop_deadline, then kill it."""
        if group_members(entry.pgid):
            if entry.stop_deadline is not None and now < entry.stop_deadline:
                return
            self._kill_group(entry, "left processes behind")
        self._forget_group(entry)
        self._after_stop(entry)

    def _after_stop(self, entry: Launched) -> None:
        """The group is gone: hold it, remove the entry, or start it again, as the stop asked."""
        then, entry.then, entry.stop_deadline = entry.then, "hold", None
        if then == "remove":
            entry.log.close()
            self.entries.pop(entry.key, None)
        elif then == "start" and not self.closing:
            entry.held = entry.failed = False
            entry.next_start = 0.0
            self._spawn(entry)
        else:
            entry.held = True

    def _kill_group(self, entry: Launched, why: str) -> None:
        if entry.pgid is not None and signal_group(entry.pgid, signal.SIGKILL):
            log.warning("%s %s: SIGKILL to its process group %d", entry.key, why, entry.pgid)
            entry.log.note(f"{why}: killed (SIGKILL to the process group)")
        if entry.process is None:
            self._forget_group(entry)

    def _forget_group(self, entry: Launched) -> None:
        if entry.pgid is not None:
            self._tell_watchdog(f"-{entry.pgid}")
            self.groups.discard(entry.pgid)
        entry.pgid = None

    # ---- spawning ----------------------------------------------------------------
    def _spawn(self, entry: Launched) -> None:
        spec = entry.spec
        if entry.gate_open:
            entry.restarts += 1
        entry.gate_open = True
        env = {**os.environ, **dict(spec.env)}
        env.setdefault("PYTHONUNBUFFERED", "1")  # a Python peripheral's prints reach its log as they happen
        entry.started_at, entry.started_mono = time.time(), time.monotonic()
        try:
            process, output_fd, input_fd = self._popen(spec, env)
        except OSError as exc:
            entry.spawn_error = f"cannot start {shlex.join(spec.command)}: {exc}"
            log.error("%s: %s", entry.key, entry.spawn_error)
            entry.log.note(entry.spawn_error)
            entry.last_exit = None
            self._after_crash(entry, None, 0.0, time.monotonic())
            return
        entry.spawn_error = ""
        entry.process, entry.pgid, entry.input_fd = process, process.pid, input_fd
        entry.input_owned = spec.stdin == "pty"
        self.groups.add(process.pid)
        self._tell_watchdog(f"+{process.pid}")
        entry.log.note(f"started pid {process.pid}: {shlex.join(spec.command)}")
        threading.Thread(target=pump, args=(output_fd, entry.log), name=f"log-{entry.key}", daemon=True).start()
        log.info("started peripheral %s (pid %d)", entry.key, process.pid)

    @staticmethod
    def _popen(spec: PeripheralSpec, env: dict[str, str]) -> tuple[subprocess.Popen, int, int | None]:
        """Its own session and process group; output to a pipe (or a pty) read by the log pump."""
        if spec.stdin == "pty":
            master, slave = pty.openpty()
            try:
                process = subprocess.Popen(list(spec.command), cwd=spec.cwd, env=env, stdin=slave, stdout=slave,
                                           stderr=slave, start_new_session=True)
            except OSError:
                os.close(master)
                raise
            finally:
                os.close(slave)
            os.set_blocking(master, True)
            return process, master, os.dup(master)
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(list(spec.command), cwd=spec.cwd, env=env, stdout=write_fd, stderr=write_fd,
                                       start_new_session=True,
                                       stdin=subprocess.PIPE if spec.stdin == "pipe" else subprocess.DEVNULL)
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        input_fd = None
        if process.stdin is not None:
            input_fd = process.stdin.fileno()
            os.set_blocking(input_fd, False)  # a peripheral that never reads its stdin must not block the supervisor
        return process, read_fd, input_fd

    def _keep_watchdog(self) -> None:
        """The group watchdog runs whenever there are peripherals; restarted (and told every group) if it died."""
        if self.watchdog is not None and self.watchdog.poll() is None:
            return
        if time.monotonic() < self.watchdog_retry_at:
            return
        if self.watchdog is not None:
            log.warning("peripheral watchdog exited (code %s); starting it again", self.watchdog.returncode)
        try:
            self.watchdog = subprocess.Popen([sys.executable, "-m", "actors.supervisor.groupwatch"], cwd=REPO_ROOT,
                                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self.watchdog, self.watchdog_retry_at = None, time.monotonic() + WATCHDOG_RETRY_S
            log.error("cannot start the peripheral watchdog (%s): peripherals would outlive a killed supervisor; "
                      "retrying", exc)
            return
        for pgid in self.groups:
            self._tell_watchdog(f"+{pgid}")

    def _tell_watchdog(self, line: str) -> None:
        if self.watchdog is None or self.watchdog.stdin is None:
            return
        try:
            self.watchdog.stdin.write(line.encode() + b"\n")
            self.watchdog.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it died: _keep_watchdog starts another and tells it every group

    # ---- stopping ----------------------------------------------------------------
    def _begin_stop(self, entry: Launched, then: str) -> None:
        """SIGTERM to the whole group now, SIGKILL at stop_timeout (checked by _step)."""
        entry.then = then
        if entry.pgid is None:
            self._after_stop(entry)
            return
        entry.stop_deadline = time.monotonic() + entry.spec.stop_timeout
        signal_group(entry.pgid, signal.SIGTERM)
        entry.log.note("stopping: SIGTERM to the process group")

    def _remove(self, entry: Launched) -> None:
        if entry.stop_deadline is not None:
            entry.then = "remove"
        else:
            self._begin_stop(entry, "remove")

    def _restart(self, entry: Launched) -> None:
        if entry.stop_deadline is not None:
            entry.then = "start"
        else:
            self._begin_stop(entry, "start")

    # ---- control -----------------------------------------------------------------
    def control(self, args: dict[str, Any], req_id: str = "") -> dict[str, Any]:
        """`launch.py peripheral ...`, `/launch ...` and the UI's :send; a repeated req_id is answered from a cache."""
        if req_id and req_id in self.answered:
            return self.answered[req_id]
        result = self._control(args)
        if req_id:
            self.answered[req_id] = result
            while len(self.answered) > REPLY_CACHE_SIZE:
                self.answered.popitem(last=False)
        return result

    def _control(self, args: dict[str, Any]) -> dict[str, Any]:
        action, name = args.get("action"), args.get("name")
        if action not in ACTIONS:
            raise BadArguments(f"peripheral action must be one of {', '.join(ACTIONS)}")
        if name is not None and not isinstance(name, str):
            raise BadArguments("peripheral name must be text")
        targets = self._targets(name, required=action in ("send", "tail"))
        if action == "list":
            return {"peripherals": self.describe(targets), "problems": list(self.problems)}
        if action == "send":
            return {"sent": self.send(targets[0], args.get("text"))}
        if action == "tail":
            return {"name": targets[0].key, "lines": list(targets[0].log.tail)}
        done = [self._act(entry, action) for entry in targets]
        return {"done": done}

    def _targets(self, name: str | None, required: bool) -> list[Launched]:
        if name in (None, "", "all") and not required:
            return list(self.entries.values())
        if name not in self.entries:
            known = ", ".join(self.entries) or "none: no peripherals.toml entries"
            raise UnknownPeripheral(f"no launched peripheral {name!r} (launched: {known})")
        return [self.entries[name]]

    def _act(self, entry: Launched, action: str) -> str:
        if action == "stop":
            entry.next_start = 0.0
            if entry.alive or entry.pgid is not None:
                self._begin_stop(entry, "hold")
                return f"{entry.key}: stopping"
            entry.held = True
            return f"{entry.key}: stopped"
        entry.failed = False
        entry.crash_times.clear()
        entry.gate_open = True
        if action == "restart" and (entry.alive or entry.pgid is not None):
            self._restart(entry)
            return f"{entry.key}: restarting"
        if entry.alive:
            return f"{entry.key}: already running (pid {entry.process.pid})"
        if entry.stop_deadline is not None:
            entry.then = "start"
            return f"{entry.key}: starting once stopped"
        entry.held = False
        entry.next_start = 0.0
        self._spawn(entry)
        return f"{entry.key}: started" if entry.alive else f"{entry.key}: {entry.spawn_error}"

    def send(self, entry: Launched, text: Any) -> str:
        """One line to the peripheral's stdin (entries with stdin = true or "pty")."""
        if not isinstance(text, str) or "\n" in text or "\r" in text:
            raise BadArguments("send needs one line of text")
        data = text.encode("utf-8") + b"\n"
        if len(data) > MAX_SEND_BYTES:
            raise BadArguments(f"a line to send is limited to {MAX_SEND_BYTES} bytes")
        if entry.spec.stdin == "none":
            raise BadArguments(f"{entry.key} has no stdin pipe (set stdin = true in peripherals.toml)")
        if not entry.alive or entry.input_fd is None:
            raise BadArguments(f"{entry.key} is not running")
        try:
            written = os.write(entry.input_fd, data)
        except BlockingIOError:
            raise BadArguments(f"{entry.key} does not read its stdin (the pipe is full); line dropped") from None
        except OSError as exc:
            raise BadArguments(f"cannot write to {entry.key}: {exc.strerror}") from None
        if written != len(data):
            raise BadArguments(f"{entry.key} took only {written} of {len(data)} bytes (its stdin is full)")
        return f"{entry.key}: {text}"

    # ---- status ------------------------------------------------------------------
    def record(self, entry: Launched) -> dict[str, Any] | None:
        if self.follower is None:
            return None
        return join_record(entry.spec, self.follower.replica.peripherals.values())

    def registered(self, entry: Launched) -> bool:
        """Online, and seen since its current process started."""
        record = self.record(entry)
        return bool(entry.alive and record and record.get("online")
                    and (record.get("last_seen") or 0.0) >= entry.started_at)

    def describe(self, entries: list[Launched] | None = None) -> list[dict[str, Any]]:
        """Process state joined with protocol state, one dict per launched peripheral."""
        now = time.monotonic()
        rows = []
        for entry in self.entries.values() if entries is None else entries:
            record = self.record(entry)
            rows.append({"name": entry.key, "registers_as": entry.spec.uuid or entry.spec.name,
                         "state": entry.state(now), "pid": entry.process.pid if entry.alive else None,
                         "restarts": entry.restarts,
                         "uptime_s": round(now - entry.started_mono, 1) if entry.alive else None,
                         "started_at": entry.started_at if entry.alive else None,
                         "last_exit": entry.last_exit,
                         "registered": self.registered(entry), "online": bool(record and record.get("online")),
                         "peripheral": record["name"] if record else None, "uuid": record["uuid"] if record else None,
                         "not_registered": entry.flagged, "stdin": entry.spec.stdin,
                         "command": shlex.join(entry.spec.command),
                         "error": entry.spawn_error})
        return rows

    def health_problems(self) -> list[str]:
        """Reasons for a degraded status: failed peripherals, and running ones that never registered."""
        problems = []
        for entry in self.entries.values():
            if entry.failed:
                problems.append(f"peripheral {entry.key} failed "
                                f"(crashed {len(entry.crash_times)} times within {entry.spec.flap_window:.0f}s)")
            elif entry.flagged:
                problems.append(f"peripheral {entry.key} runs but has not registered "
                                f"within {entry.spec.start_timeout:.0f}s")
        return problems

    def beat(self) -> list[dict[str, Any]]:
        """The compact rows the supervisor's heartbeat carries (the gateway's /status and the UI read them). They carry
        when a program started, not its uptime: rows that change every pass would make every pass a changed beat."""
        keys = ("name", "state", "pid", "restarts", "started_at", "last_exit", "registered", "online",
                "peripheral", "not_registered")
        return [{**{key: row[key] for key in keys}, "error": shorten(row["error"], BEAT_ERROR_CHARS)}
                for row in self.describe()]


def shorten(text: str, limit: int) -> str:
    """At most limit characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"
