"""What every actor process does around its own loop: arguments, logging, signals, parent watch."""
from __future__ import annotations

import argparse
import ctypes
import logging
import logging.handlers
import os
import signal
import sys
from typing import Callable, Protocol

import zmq

from .runfolder import ensure_runtime_dirs
from .settings import Runtime

LOG_MAX_BYTES = 2 * 1024 * 1024
LOG_BACKUPS = 3
LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
CONSOLE_TIME_FORMAT = "%H:%M:%S"


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


class StopFlag:
    """Set by SIGTERM/SIGINT or by a dead parent; the actor's loop checks it and returns.

    Loops sleep until their next deadline, so setting the flag also wakes them: a sync loop polls
    ``wakeup_fd()``, an asyncio loop registers a callback with ``on_set``.
    """

    def __init__(self, parent_pid: int | None = None) -> None:
        self.stopping = False
        self.parent_pid = parent_pid
        self.callbacks: list[Callable[[], None]] = []
        self.pipe: tuple[int, int] | None = None

    def set(self, *_: object) -> None:
        self.stopping = True
        if self.pipe is not None:
            try:
                os.write(self.pipe[1], b"x")
            except OSError:
                pass  # the pipe is full: it is readable already
        for callback in list(self.callbacks):
            callback()

    def wakeup_fd(self) -> int:
        """A file descriptor that becomes readable once the flag is set (for zmq.Poller.register)."""
        if self.pipe is None:
            self.pipe = os.pipe()
            os.set_blocking(self.pipe[1], False)
            if self.stopping:
                os.write(self.pipe[1], b"x")
        return self.pipe[0]

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call callback when the flag is set; from a signal handler, so quick (e.g. loop.call_soon_threadsafe)."""
        self.callbacks.append(callback)
        if self.stopping:
            callback()

    def should_stop(self) -> bool:
        """True once asked to stop, or once the supervisor that started us is gone (no orphans)."""
        if not self.stopping and self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.stopping = True
        return self.stopping

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.set)
        signal.signal(signal.SIGINT, self.set)
        if self.parent_pid is not None:
            ask_for_signal_on_parent_death(signal.SIGTERM)
            if os.getppid() != self.parent_pid:  # died before we asked
                self.set()


def ask_for_signal_on_parent_death(signum: int) -> None:
    """Linux: be sent signum when the parent dies, so an orphan stops at once without polling getppid()."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: should_stop() still notices a new parent at the next wake-up


class Actor(Protocol):
    def run(self) -> int | None: ...


def setup_logging(runtime: Runtime, actor: str, replace_handlers: bool = True) -> None:
    """A rotating file per actor in <config>/logs, plus stderr when the runtime asks for it.

    replace_handlers: an actor process owns its root logger; launch.py's supervisor keeps handlers already
    there (a test harness's capture).
    """
    runtime.log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if replace_handlers:
        root.handlers.clear()
    root.setLevel(runtime.log_level)
    file_handler = logging.handlers.RotatingFileHandler(runtime.log_dir / f"{actor}.log", maxBytes=LOG_MAX_BYTES,
                                                        backupCount=LOG_BACKUPS)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(file_handler)
    if runtime.console_log:
        root.addHandler(console_handler(actor))


def console_handler(actor: str) -> logging.Handler:
    """The one console format: time, who, level, message."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(f"%(asctime)s {actor:>8} %(levelname)s %(message)s", CONSOLE_TIME_FORMAT))
    return console


def parse_actor_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one orchestrator actor.")
    parser.add_argument("--runtime", help="Runtime as JSON (the supervisor passes this)")
    parser.add_argument("--config-dir", default="config", help="config folder, when run by hand")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--name", default=None, help="instance name (e.g. router-2)")
    return parser.parse_args(argv)


def run_actor(kind: str, factory: Callable[[Runtime, zmq.Context, StopFlag, str], Actor],
              argv: list[str] | None = None) -> int:
    """Wire one actor process: parse args, log, handle signals, build the actor, run it, clean up."""
    args = parse_actor_args(argv)
    if args.runtime:
        runtime = Runtime.from_json(args.runtime)
    else:
        runtime = Runtime.for_config_dir(args.config_dir, console_log=True)
    name = args.name or kind
    ensure_runtime_dirs(runtime)
    setup_logging(runtime, name)
    stop = StopFlag(args.parent_pid)
    stop.install()
    context = zmq.Context()
    log = logging.getLogger(f"actors.{kind}")
    try:
        code = factory(runtime, context, stop, name).run()
    except zmq.ContextTerminated:
        code = 0
    except Exception:
        log.exception("%s crashed", name)
        return 1
    finally:
        context.destroy(linger=0)
    return code if isinstance(code, int) else 0  # an actor may end with its own exit code (the UI: no terminal)
