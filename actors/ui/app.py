"""The terminal UI actor: a live overview of a running orchestrator, and menus that act on it.

The view is built only from the bus (``busview.BusView``: replica, activity, heartbeats); it never
reads the config files. Every action is a text command run on this instance over the bus, so it goes
through exactly the command handling peripherals and people use.

Layout and text live in ``viewmodel`` (pure); ``screens.Interaction`` turns keys into screens and
commands without curses; ``Painter`` and ``UiActor`` here are the only parts that touch the terminal,
always through ``curses.wrapper`` so the terminal is restored whatever happens. Keys: ``d`` detaches and ``q`` /
Ctrl+C close this UI; both leave the orchestrator running and exit 0.
"""
from __future__ import annotations

import contextlib
import curses
import dataclasses
import locale
import logging
import os
import sys
import time
from typing import Any, Iterator

import zmq

from ..core.bus import BusPresence, next_boundary
from ..core.protocol import Op
from ..core.runner import StopFlag, run_actor, setup_logging
from ..core.settings import REQUEST_TIMEOUT_S, Runtime
from ..supervisor.cli import bus_command
from ..supervisor.peripheralcli import ui_local_command
from . import viewmodel as vm
from .busview import SNAPSHOT_TIMEOUT_S, BusView
from .screens import DETACH, QUIT, STOPPED, Interaction

log = logging.getLogger(__name__)

FRAME_INTERVAL_S = 0.05  # at most 20 redraws a second while things change
IDLE_REDRAW_S = 1.0  # nothing changed: ages and uptime still move once a second, so the screen does too (no oftener)
COMMAND_TIMEOUT_S = REQUEST_TIMEOUT_S * 3  # a command may wait on the state keeper's own retries
ESC_DELAY_MS = 25
EXIT_OK = 0
EXIT_NO_TERMINAL = 2
ASCII_FALLBACK = str.maketrans({"→": "->", "—": "-", "…": "~", "▸": ">", "↑": "^", "↓": "v"})


# ---- curses ---------------------------------------------------------------------------------
class Painter:
    """Draws lines with curses: attributes per style, colours when the terminal has them, never wrapping."""

    PALETTE = (curses.COLOR_CYAN, curses.COLOR_GREEN, curses.COLOR_YELLOW, curses.COLOR_MAGENTA, curses.COLOR_BLUE,
               curses.COLOR_RED)
    ALERT_PAIR = len(PALETTE) + 1

    def __init__(self, stdscr: Any) -> None:
        self.stdscr = stdscr
        self.shown: list[vm.Line] | None = None  # what the last paint drew: the same lines again cost no curses calls
        self.colours = self._init_colours()
        self.utf8 = locale.getpreferredencoding(False).lower().replace("-", "") == "utf8"
        self.base = {
            vm.Style.NORMAL: curses.A_NORMAL, vm.Style.TITLE: curses.A_REVERSE | curses.A_BOLD,
            vm.Style.HEADER: curses.A_BOLD | curses.A_UNDERLINE,
            vm.Style.FOCUSED_HEADER: curses.A_REVERSE, vm.Style.DIM: curses.A_DIM, vm.Style.ALERT: curses.A_BOLD,
            vm.Style.SELECTED: curses.A_REVERSE, vm.Style.FOOTER: curses.A_REVERSE,
        }

    def _init_colours(self) -> bool:
        if not curses.has_colors():
            return False
        try:
            curses.start_color()
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK  # terminals without default colours
        for index, colour in enumerate(self.PALETTE, start=1):
            curses.init_pair(index, colour, background)
        curses.init_pair(self.ALERT_PAIR, curses.COLOR_RED, background)
        return True

    def attr(self, line: vm.Line) -> int:
        attr = self.base[line.style]
        if self.colours and line.colour is not None:
            attr |= curses.color_pair(1 + line.colour % len(self.PALETTE))
        elif self.colours and line.style is vm.Style.ALERT:
            attr |= curses.color_pair(self.ALERT_PAIR)
        return attr

    def text(self, text: str, width: int) -> str:
        if not self.utf8:
            text = text.translate(ASCII_FALLBACK).encode("ascii", "replace").decode("ascii")
            text = text[:width]
        return text

    def paint(self, lines: list[vm.Line], full: bool = False) -> None:
        """erase + noutrefresh + doupdate: curses sends only the cells that changed, so nothing flickers.

        ``full`` (after a resize) clears the terminal first: the terminal has rearranged its cells by
        itself, so curses' idea of what is on screen no longer holds and a diff would leave debris.
        """
        if lines == self.shown and not full:
            return
        before = self.shown
        self.shown = lines
        height, width = self.stdscr.getmaxyx()
        if full or before is None or len(before) != len(lines):
            self.stdscr.clear() if full else self.stdscr.erase()
            before = []
        for y, line in enumerate(lines[:height]):
            if y < len(before) and before[y] == line:
                continue  # the clock's repaint changes a line or two: only those are written again
            self.stdscr.move(y, 0)
            self.stdscr.clrtoeol()
            if not line.text:
                continue
            try:
                self.stdscr.addstr(y, 0, self.text(line.text, width), self.attr(line))
            except curses.error:
                pass  # writing the bottom-right cell moves the cursor off screen: curses draws it, then reports this
        self.stdscr.noutrefresh()
        curses.doupdate()


def clock_redraw_at(last_draw: float) -> float:
    """The next whole second of the monotonic clock after the last frame: the board's beats fall on such seconds too
    (core.bus.next_boundary), so the clock's repaint and a beat round share one wake-up."""
    return next_boundary(last_draw, IDLE_REDRAW_S)


@contextlib.contextmanager
def console_logging_paused() -> Iterator[None]:
    """Log handlers that write to the terminal would scribble over the screen: park them while curses runs."""
    root = logging.getLogger()
    parked = [h for h in root.handlers
              if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for handler in parked:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in parked:
            root.addHandler(handler)


class UiActor:
    """The curses UI process: one loop polling the bus and the keyboard, drawing on change or once a second."""

    def __init__(self, runtime: Runtime, context: zmq.Context, stop: StopFlag, name: str = "ui") -> None:
        self.runtime = runtime
        self.context = context
        self.stop = stop
        self.name = name
        self.exit_reason = ""
        self.exit_code = EXIT_OK
        self.frames = 0
        self.commands = 0
        self.resized = False

    def run(self) -> int:
        """Draw until closed; the exit code says why it ended (EXIT_NO_TERMINAL without a TTY)."""
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            log.error("%s: no terminal to draw on; the UI needs a TTY (the orchestrator itself runs fine without one)",
                      self.name)
            self.exit_code = EXIT_NO_TERMINAL
            return self.exit_code
        locale.setlocale(locale.LC_ALL, "")  # before initscr, so curses draws UTF-8
        curses.use_env(False)  # the terminal's size, not a stale LINES/COLUMNS from the environment
        self.view = BusView(self.runtime, self.context, self.name)
        # beat_on_change off: the UI's counters move with every event
        self.presence = BusPresence(self.context, self.runtime.endpoints, self.name, beat_on_change=False)
        self.heart = self.presence.heart
        self.interaction = Interaction(self._command, self.view.model)
        log.info("%s attached to %s", self.name, self.runtime.config_dir)
        try:
            with console_logging_paused():
                self.exit_reason = curses.wrapper(self._session)
            log.info("%s closed (%s); the orchestrator keeps running", self.name, self.exit_reason)
            if self.exit_reason in (DETACH, QUIT):
                print("UI closed; the orchestrator keeps running. Attach again: "
                      f"python launch.py --config-dir {self.runtime.config_dir} ui", flush=True)
        finally:
            self.presence.close()
            self.view.close()
        return self.exit_code

    def _command(self, line: str) -> str:
        """Run one command line on our own instance over the bus (never the command port: no token, no squatter);
        a failure becomes the reply text."""
        self.commands += 1
        local = ui_local_command(line, lambda **args: self.view.control.request(Op.CONTROL_PERIPHERAL,
                                                                                timeout=SNAPSHOT_TIMEOUT_S, **args))
        if local is not None:  # :send and :logs are the UI's own, for launched peripherals
            return local
        try:
            return bus_command(self.runtime, line, COMMAND_TIMEOUT_S, self.context) or "(no reply)"
        except OSError as exc:  # cli.Unreachable, whose message names the socket
            return f"Could not send the command: {exc}"

    def _session(self, stdscr: Any) -> str:
        """The loop inside curses.wrapper: wait for bus or keyboard, update, redraw when due."""
        curses.raw()  # Ctrl+C arrives as a key, not as SIGINT to every process on this terminal
        curses.noecho()
        stdscr.keypad(True)
        stdscr.nodelay(True)
        curses.set_escdelay(ESC_DELAY_MS)
        with contextlib.suppress(curses.error):
            curses.curs_set(0)  # some terminals cannot hide the cursor
        painter = Painter(stdscr)
        poller = zmq.Poller()
        for sock in self.view.follower.sockets:
            poller.register(sock, zmq.POLLIN)
        poller.register(sys.stdin.fileno(), zmq.POLLIN)
        poller.register(self.stop.wakeup_fd(), zmq.POLLIN)
        dirty, last_draw, was_connected = True, 0.0, False
        while not self.stop.should_stop():
            poller.poll(self._wait_ms(dirty, last_draw))
            dirty |= self.view.drain()
            dirty |= self.view.maybe_snapshot()
            pressed = self._read_keys(stdscr)
            if self.interaction.exit:
                return self.interaction.exit
            connected = self.view.connected()
            dirty |= connected != was_connected
            was_connected = connected
            self.heart.maybe_beat(self._stats())
            self._follow_terminal_size(stdscr)
            dirty |= self.resized
            now = time.monotonic()
            if pressed or (dirty and now - last_draw >= FRAME_INTERVAL_S) or now >= clock_redraw_at(last_draw):
                height, width = stdscr.getmaxyx()
                painter.paint(self.interaction.render(width, height), full=self.resized)
                self.frames += 1
                self.resized = False
                dirty, last_draw = False, now
        return STOPPED

    def _wait_ms(self, dirty: bool, last_draw: float) -> int:
        """Until the next frame (a change is waiting), the clock's next repaint, a beat or a snapshot retry;
        events and keys wake us at once."""
        now = time.monotonic()
        frame_at = last_draw + FRAME_INTERVAL_S if dirty else clock_redraw_at(last_draw)
        wait = frame_at - now if dirty else min(frame_at - now, self.heart.due_in())
        retry = self.view.follower.due_in()  # None while in step or while the bus is dead: a beat wakes us
        if retry is not None:
            wait = min(wait, retry)
        return max(0, int(wait * 1000) + 1)

    def _read_keys(self, stdscr: Any) -> bool:
        """Handle every key waiting; True when there was at least one."""
        pressed = False
        while not self.interaction.exit:
            try:
                key = stdscr.get_wch()
            except curses.error:
                break  # no more input
            pressed = True
            if key == curses.KEY_RESIZE:
                curses.update_lines_cols()
                self.resized = True
            self.interaction.on_key(key)
        return pressed

    def _follow_terminal_size(self, stdscr: Any) -> None:
        """Compare with the terminal's real size: a SIGWINCH that curses missed (resizes in quick succession) heals
        here."""
        try:
            columns, rows = os.get_terminal_size(sys.stdout.fileno())
        except OSError:
            return
        if (rows, columns) != stdscr.getmaxyx():
            curses.resizeterm(rows, columns)
            self.resized = True

    def _stats(self) -> dict[str, Any]:
        return {**self.view.stats(), "frames": self.frames, "commands": self.commands}


def attach(runtime: Runtime, name: str | None = None) -> int:
    """Run a UI in this process against a running instance (``python launch.py ui``); returns the exit code."""
    name = name or f"ui-{os.getpid()}"
    if not logging.getLogger().handlers:
        setup_logging(dataclasses.replace(runtime, console_log=False), name)
    stop = StopFlag()
    stop.install()
    context = zmq.Context()
    try:
        actor = UiActor(runtime, context, stop, name)
        actor.run()
        return actor.exit_code
    finally:
        context.destroy(linger=0)


def main(argv: list[str] | None = None) -> int:
    return run_actor("ui", UiActor, argv)

