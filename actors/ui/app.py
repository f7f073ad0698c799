"""The terminal UI actor: a live overview of a running orchestrator, and menus that act on it.

The view is built only from the bus: a StateReplica (snapshot from the state keeper, then STATE
updates), ACTIVITY events (a bounded deque) and HEARTBEATs (which actors are alive, their counters).
It never reads the config files. Every action is a text command sent to the gateway's command port,
so it goes through exactly the command handling peripherals and people use.

Layout and text live in ``viewmodel`` (pure); ``Interaction`` turns keys into screens and commands
without curses; ``Painter`` and ``UiActor`` are the only parts that touch the terminal, always through
``curses.wrapper`` so the terminal is restored whatever happens. Keys: ``d`` detaches and ``q`` /
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
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, Union

import zmq

from . import viewmodel as vm
from ..core.bus import BusPresence, beat_expiry, connect_subscriber, parse_event
from ..supervisor.cli import bus_command
from ..core.errors import OrchestratorError
from ..core.follower import SyncReplicaFollower
from ..supervisor.peripheralcli import ui_local_command
from ..core.protocol import Activity, Heartbeat, Op, ProtocolError, StateUpdate, Topic
from ..core.rules import FILTER_KEY, RULE_KEYS, SYNTAX, TRANSFORM_KEY
from ..core.runner import StopFlag, run_actor, setup_logging
from ..core.settings import HEARTBEAT_EXPIRY_S, HEARTBEAT_INTERVAL_S, REQUEST_TIMEOUT_S, Runtime
from ..core.requests import RequestClient


log = logging.getLogger(__name__)

ACTIVITY_KEEP = 2000  # lines of recent activity kept in memory (scrollable)
MAX_EVENTS_PER_DRAIN = 5000  # bounded, so a flood of events cannot starve the keyboard
FRAME_INTERVAL_S = 0.05  # at most 20 redraws a second while things change
IDLE_REDRAW_S = 1.0  # nothing changed: ages and uptime still move once a second, so the screen does too (no oftener)
SNAPSHOT_TIMEOUT_S = HEARTBEAT_INTERVAL_S
SNAPSHOT_RETRY_S = HEARTBEAT_INTERVAL_S
COMMAND_TIMEOUT_S = REQUEST_TIMEOUT_S * 3  # a command may wait on the state keeper's own retries
ACTOR_FORGET_S = HEARTBEAT_EXPIRY_S * 20  # an actor silent this long leaves the status line for good
ESC_DELAY_MS = 25
EXIT_OK = 0
EXIT_NO_TERMINAL = 2
DETACH, QUIT, STOPPED = "detach", "quit", "stopped"

KEY_CTRL_C, KEY_TAB, KEY_ENTER_LF, KEY_ENTER_CR, KEY_ESC, KEY_BS, KEY_DEL = 3, 9, 10, 13, 27, 8, 127
ENTER_KEYS = (KEY_ENTER_LF, KEY_ENTER_CR, curses.KEY_ENTER)
BACKSPACE_KEYS = (KEY_BS, KEY_DEL, curses.KEY_BACKSPACE)
Key = Union[int, str]  # int: a control or special key; str: one printable character

MENU_ITEMS = ("List Peripherals", "Add Route", "Edit Route", "Remove Route", "Remove Peripheral", "Reset Orchestrator",
              "Launched Programs", "Exit Menu")
MENU_HINT = f"↑↓ choose  Enter select  1-{len(MENU_ITEMS)} shortcut  Esc back"
PICK_HINT = "↑↓ PgUp PgDn choose  Enter select  Esc back"
TEXT_HINT = "↑↓ PgUp PgDn scroll  any other key: back"
PROMPT_HINT = "Enter confirm  Esc cancel"
CONFIRM_HINT = "y yes  any other key: no"
EDIT_ENDS, CLEAR_RULES = "ends", "clear"  # Edit Route actions besides setting one rule (FILTER_KEY / TRANSFORM_KEY)
RULE_EXAMPLES = {
    FILTER_KEY: ("json:final == true   (only final ASR results)", "re:^FINAL:   (lines starting FINAL:)"),
    TRANSFORM_KEY: ("sub:/^FINAL: //   (strip a prefix)", "json:pick text   (just one field)",
                    "template:{source}: {payload}"),
}
ASCII_FALLBACK = str.maketrans({"→": "->", "—": "-", "…": "~", "▸": ">", "↑": "^", "↓": "v"})


def normalise_key(key: Key) -> Key:
    """Control characters as ints, printable characters as one-character strings."""
    if isinstance(key, str) and len(key) == 1 and (ord(key) < 32 or ord(key) == KEY_DEL):
        return ord(key)
    return key


# ---- the picture of the system, from the bus ---------------------------------------------------
class BusView:
    """Replica + activity + actor heartbeats, fed only by events and the state keeper's snapshot."""

    def __init__(self, runtime: Runtime, context: zmq.Context, own_name: str) -> None:
        self.own_name = own_name
        # Updates, the keeper's beat and activity wake the UI (the follower's sockets); the other actors' beats
        # (self.beats) only refresh figures the next repaint shows, so they are read then, not woken for.
        # A snapshot is asked without waiting, again only while the bus is alive: a dead one costs no waits.
        self.follower = SyncReplicaFollower(context, runtime.endpoints, (Topic.ACTIVITY,), on_event=self._on_event,
                                            may_retry=self.connected, retry_s=SNAPSHOT_RETRY_S,
                                            max_events=MAX_EVENTS_PER_DRAIN)
        self.replica = self.follower.replica
        self.beats = connect_subscriber(context, runtime.endpoints, (Topic.HEARTBEAT,))
        self.control = RequestClient(context, runtime.endpoints.control, runtime.endpoints.keys_dir)
        self.activity: deque[vm.ActivityLine] = deque(maxlen=ACTIVITY_KEEP)
        self.actors: dict[str, vm.ActorStatus] = {}
        self.started = time.monotonic()
        self.last_beat: float | None = None
        self.last_beat_expiry = HEARTBEAT_EXPIRY_S
        self.events = 0
        self.unknown = 0  # well-formed events of a kind the UI does not show

    @property
    def snapshots(self) -> int:
        return self.follower.snapshots

    @property
    def dropped(self) -> int:
        return self.follower.dropped + self.unknown

    def close(self) -> None:
        self.control.close()
        self.follower.close()
        self.beats.close()

    def connected(self) -> bool:
        """Someone other than us beat within the expiry that beat announced: the bus is alive."""
        return self.last_beat is not None and time.monotonic() - self.last_beat < self.last_beat_expiry

    def drain(self) -> bool:
        """Read every waiting event (bounded per source, so a flood cannot starve the keyboard); True when something on
        screen changed."""
        changed = self.follower.drain_events()
        for _ in range(MAX_EVENTS_PER_DRAIN):
            try:
                frames = self.beats.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                _, message = parse_event(frames)
            except ProtocolError:
                self.follower.core.dropped += 1
                continue
            changed |= self._on_event(message)
        return changed

    def _on_event(self, message: object) -> bool:
        """The follower's event hook (the replica has taken updates already), and the other actors' beats."""
        self.events += 1
        if isinstance(message, StateUpdate):
            return False
        if isinstance(message, Activity):
            self.activity.append(vm.ActivityLine(message.ts, message.actor, message.level, message.text))
            return True
        if isinstance(message, Heartbeat):
            return self._on_heartbeat(message)
        self.unknown += 1
        return False

    def _on_heartbeat(self, beat: Heartbeat) -> bool:
        """Record the actor (the state keeper's beat has told the replica whether it missed an update)."""
        if beat.actor == self.own_name:
            return False
        now = time.monotonic()
        known = self.actors.get(beat.actor)
        self.actors[beat.actor] = vm.ActorStatus(beat.actor, now, beat.started_at, beat.pid, beat.stats, beat.host,
                                                 beat_expiry(beat))
        was_silent = not self.connected()
        self.last_beat, self.last_beat_expiry = now, beat_expiry(beat)
        self._forget_silent(now)
        return was_silent or known is None or known.pid != beat.pid

    def _forget_silent(self, now: float) -> None:
        for name in [n for n, a in self.actors.items() if now - a.last_beat > ACTOR_FORGET_S]:
            del self.actors[name]

    def maybe_snapshot(self) -> bool:
        """Take a snapshot that arrived, ask (never waiting) when one is due; True when one loaded."""
        if not self.follower.maybe_snapshot():
            return False
        if self.snapshots == 1:
            self._load_history()
        return True

    def _load_history(self) -> None:
        """Activity from before we attached, kept by the supervisor; merged in time order, without repeats."""
        try:
            result = self.control.request(Op.CONTROL_ACTIVITY, timeout=SNAPSHOT_TIMEOUT_S)
        except OrchestratorError as exc:
            log.debug("no activity history: %s", exc)
            return
        seen = {(line.ts, line.actor, line.text) for line in self.activity}
        older = [vm.ActivityLine(e["ts"], e["actor"], e["level"], e["text"]) for e in result.get("activity", [])
                 if isinstance(e, dict) and (e.get("ts"), e.get("actor"), e.get("text")) not in seen]
        merged = sorted([*older, *self.activity], key=lambda line: line.ts)
        self.activity = deque(merged[-ACTIVITY_KEEP:], maxlen=ACTIVITY_KEEP)

    def model(self) -> vm.Model:
        now_mono = time.monotonic()
        return vm.Model(
            script_uuid=str(self.replica.config.get("script_uuid", "")),
            peripherals=list(self.replica.peripherals.values()),
            routes=list(self.replica.routes.values()),
            activity=self.activity,
            actors=self.actors,
            connected=self.connected(),
            ever_connected=self.last_beat is not None,
            silent_for_s=now_mono - (self.last_beat if self.last_beat is not None else self.started),
            now=time.time(),
            now_mono=now_mono,
            alive_within_s=HEARTBEAT_EXPIRY_S,
        )

    def stats(self) -> dict[str, Any]:
        return {"events": self.events, "dropped": self.dropped, "snapshots": self.snapshots,
                "connected": self.connected(),
                "peripherals": len(self.replica.peripherals), "routes": len(self.replica.routes)}


# ---- screens: keys in, lines out (no curses) -------------------------------------------------------
class Screen:
    """One modal screen on top of the overview."""

    def lines(self, width: int, height: int) -> list[vm.Line]:
        raise NotImplementedError

    def key(self, key: Key, ui: "Interaction") -> None:
        raise NotImplementedError


def _move(selected: int, key: Key, total: int, page: int) -> int | None:
    """The new selection after a movement key, or None when the key does not move."""
    steps = {curses.KEY_UP: -1, "k": -1, curses.KEY_DOWN: 1, "j": 1, curses.KEY_PPAGE: -page, curses.KEY_NPAGE: page}
    if key in steps:
        return max(0, min(total - 1, selected + steps[key]))
    if key in (curses.KEY_HOME, "g"):
        return 0
    if key in (curses.KEY_END, "G"):
        return max(0, total - 1)
    return None


@dataclass
class MenuScreen(Screen):
    selected: int = 0

    def lines(self, width: int, height: int) -> list[vm.Line]:
        options = [f"{i + 1}. {item}" for i, item in enumerate(MENU_ITEMS)]
        return vm.list_screen("Menu", options, self.selected, width, height, MENU_HINT)

    def key(self, key: Key, ui: "Interaction") -> None:
        moved = _move(self.selected, key, len(MENU_ITEMS), len(MENU_ITEMS))
        if moved is not None:
            self.selected = moved
        elif isinstance(key, str) and key.isdigit() and 1 <= int(key) <= len(MENU_ITEMS):
            self.selected = int(key) - 1
            ui.menu_action(MENU_ITEMS[self.selected])
        elif key in ENTER_KEYS:
            ui.menu_action(MENU_ITEMS[self.selected])
        elif key in (KEY_ESC, "q", "m", "M", curses.KEY_LEFT):
            ui.pop()


@dataclass
class PickScreen(Screen):
    """Choose one of (label, value); on_pick gets the value."""

    title: str
    options: Sequence[tuple[str, str]]
    on_pick: Callable[[str], None]
    selected: int = 0
    page: int = 10

    def lines(self, width: int, height: int) -> list[vm.Line]:
        self.page = max(1, height - 4)
        return vm.list_screen(self.title, [label for label, _ in self.options], self.selected, width, height, PICK_HINT)

    def key(self, key: Key, ui: "Interaction") -> None:
        moved = _move(self.selected, key, len(self.options), self.page)
        if moved is not None:
            self.selected = moved
        elif key in ENTER_KEYS and self.options:
            self.on_pick(self.options[self.selected][1])
        elif key in (KEY_ESC, curses.KEY_LEFT):
            ui.pop()


@dataclass
class PromptScreen(Screen):
    title: str
    prompt: str
    on_submit: Callable[[str], None]
    buffer: str = ""
    notes: Sequence[str] = ()

    def lines(self, width: int, height: int) -> list[vm.Line]:
        return vm.prompt_screen(self.title, self.prompt, self.buffer, width, height, PROMPT_HINT, self.notes)

    def key(self, key: Key, ui: "Interaction") -> None:
        if key in ENTER_KEYS and self.buffer.strip():
            self.on_submit(self.buffer.strip())
        elif key in BACKSPACE_KEYS:
            self.buffer = self.buffer[:-1]
        elif key == KEY_ESC:
            ui.pop()
        elif isinstance(key, str) and key.isprintable():
            self.buffer += key


@dataclass
class ConfirmScreen(Screen):
    title: str
    question: str
    on_yes: Callable[[], None]

    def lines(self, width: int, height: int) -> list[vm.Line]:
        text = f"{self.question}\n\nPress y to confirm, any other key to cancel."
        lines, _ = vm.text_screen(self.title, text, 0, width, height, CONFIRM_HINT)
        return lines

    def key(self, key: Key, ui: "Interaction") -> None:
        if key in ("y", "Y"):
            self.on_yes()
        else:
            ui.pop()


@dataclass
class TextScreen(Screen):
    """A command's reply (or any message), scrollable."""

    title: str
    text: str
    offset: int = 0
    page: int = 10

    def lines(self, width: int, height: int) -> list[vm.Line]:
        self.page = max(1, height - 4)
        lines, self.offset = vm.text_screen(self.title, self.text, self.offset, width, height, TEXT_HINT)
        return lines

    def key(self, key: Key, ui: "Interaction") -> None:
        moved = _move(self.offset, key, 1 << 30, self.page)
        if moved is not None:
            self.offset = moved
        else:
            ui.pop()


@dataclass
class Interaction:
    """The UI's behaviour without a terminal: a stack of screens over the overview, the ':' line, and exit."""

    send: Callable[[str], str]
    model_source: Callable[[], vm.Model]
    stack: list[Screen] = field(default_factory=list)
    scroll: vm.Scroll = vm.Scroll()
    command: str | None = None
    page_rows: dict[vm.Section, int] = field(default_factory=dict)
    exit: str | None = None

    # ---- output ----------------------------------------------------------------------
    def render(self, width: int, height: int) -> list[vm.Line]:
        if self.stack:
            return self.stack[-1].lines(width, height)
        footer = vm.command_footer(self.command, width) if self.command is not None else None
        frame = vm.overview(self.model_source(), width, height, self.scroll, footer)
        self.scroll, self.page_rows = frame.scroll, frame.page_rows or self.page_rows
        return frame.lines

    # ---- input -----------------------------------------------------------------------
    def on_key(self, key: Key) -> None:
        key = normalise_key(key)
        if key == KEY_CTRL_C:
            self.exit = QUIT
        elif key == curses.KEY_RESIZE:
            return
        elif self.stack:
            self.stack[-1].key(key, self)
        elif self.command is not None:
            self._command_key(key)
        else:
            self._overview_key(key)

    def _overview_key(self, key: Key) -> None:
        if key in ("m", "M"):
            self.push(MenuScreen())
        elif key == ":":
            self.command = ""
        elif key == "/":
            self.command = "/"
        elif key in (KEY_TAB, curses.KEY_BTAB):
            self.scroll = self.scroll.next_focus()
        elif key == "d":
            self.exit = DETACH
        elif key == "q":
            self.exit = QUIT
        else:
            self._scroll_key(key)

    def _scroll_key(self, key: Key) -> None:
        """Arrows scroll the focused section; in the activity log 'up' means older lines."""
        section = self.scroll.focus
        page = max(1, self.page_rows.get(section, 1) - vm.PAGE_OVERLAP_ROWS)
        sign = -1 if section is vm.Section.ACTIVITY else 1
        steps = {curses.KEY_UP: -1, "k": -1, curses.KEY_DOWN: 1, "j": 1, curses.KEY_PPAGE: -page,
                 curses.KEY_NPAGE: page}
        offset = self.scroll.offset(section)
        if key in steps:
            offset += sign * steps[key]
        elif key in (curses.KEY_HOME, "g"):
            offset = 0 if sign > 0 else 1 << 30
        elif key in (curses.KEY_END, "G"):
            offset = 1 << 30 if sign > 0 else 0
        else:
            return
        self.scroll = self.scroll.with_offset(section, offset)

    def _command_key(self, key: Key) -> None:
        buffer = self.command or ""
        if key in ENTER_KEYS:
            line, self.command = vm.as_command(buffer), None
            if line:
                self.push(TextScreen(line, self.send(line)))
        elif key in BACKSPACE_KEYS:
            self.command = buffer[:-1] if buffer else None
        elif key == KEY_ESC:
            self.command = None
        elif isinstance(key, str) and key.isprintable():
            self.command = buffer + key

    # ---- screens ---------------------------------------------------------------------
    def push(self, screen: Screen) -> None:
        self.stack.append(screen)

    def pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def finish(self, base: int, title: str, line: str) -> None:
        """Send a command, go back to the screen the action started from, and show the reply there."""
        reply = self.send(line)
        del self.stack[base:]
        self.push(TextScreen(f"{title}: {line}", reply))

    def menu_action(self, item: str) -> None:
        """Start the flow for one menu item; each ends in a command and its reply."""
        base = len(self.stack)
        model = self.model_source()
        peripherals = sorted(model.peripherals, key=lambda p: str(p.get("name", "")))
        choices = [(f"{p['name']}  (port {p.get('port')}, {'online' if p.get('online') else 'offline'})",
                    str(p["name"])) for p in peripherals]
        names = {p.get("uuid"): str(p.get("name")) for p in peripherals}
        routes = [(f"{r['name']}{vm.RULE_MARKER if vm.has_rules(r) else ''}  "
                   f"({vm.end_label(names, r.get('incoming'), r.get('incoming_port'))} "
                   f"{vm.ARROW} {vm.end_label(names, r.get('outgoing'), r.get('outgoing_port'))})", str(r["name"]))
                  for r in sorted(model.routes, key=lambda r: str(r.get("name", "")))]
        if item == "Exit Menu":
            self.pop()
        elif item == "List Peripherals":
            self.finish(base, item, "/list")
        elif item == "Reset Orchestrator":
            question = "Reset the orchestrator? Every peripheral and route is forgotten (the files are backed up)."
            self.push(ConfirmScreen(item, question, lambda: self.finish(base, item, "/reset")))
        elif item == "Launched Programs":
            self._launched_programs(base, model)
        elif item in ("Add Route", "Remove Peripheral") and not choices:
            self.push(TextScreen(item, "No peripherals are known yet."))
        elif item in ("Edit Route", "Remove Route") and not routes:
            self.push(TextScreen(item, "No routes exist yet."))
        elif item == "Add Route":
            self._add_route(base, choices)
        elif item == "Edit Route":
            records = {str(r["name"]): r for r in model.routes}
            self.push(PickScreen("Edit Route: which route?", routes,
                                 lambda route: self._edit_route(base, route, choices, records.get(route, {}))))
        elif item == "Remove Route":
            self.push(PickScreen("Remove Route: which route?", routes,
                                 lambda route: self.finish(base, item, f"/routes remove {route}")))
        elif item == "Remove Peripheral":
            self.push(PickScreen("Remove Peripheral: which one?", choices, lambda name: self.push(
                ConfirmScreen(item, f"Remove {name} and every route to or from it?",
                              lambda: self.finish(base, item, f"/remove {name}")))))

    def _launched_programs(self, base: int, model: vm.Model) -> None:
        """The programs peripherals.toml starts, with their process state; Enter shows one's last log lines."""
        rows = sorted(vm.launched_rows(model), key=lambda row: str(row.get("name", "")))
        if not rows:
            self.push(TextScreen("Launched Programs", "No program is launched from peripherals.toml."))
            return
        options = [(f"{row.get('name', '?')}  {vm.process_label(row)}", str(row.get("name"))) for row in rows]
        self.push(PickScreen("Launched Programs: Enter shows the last log lines", options,
                             lambda name: self.finish(base, "Launched Programs", f":logs {name}")))

    def _add_route(self, base: int, choices: list[tuple[str, str]]) -> None:
        def named(source: str, sink: str) -> None:
            prompt = PromptScreen("Add Route", f"Name for {source} {vm.ARROW} {sink}:",
                                  lambda name: self.finish(base, "Add Route", f"/routes add {name} {source} {sink}"))
            prompt.buffer = f"{source}_to_{sink}"
            self.push(prompt)
        def outgoing(source: str) -> None:
            title = f"Add Route: outgoing (receives from {source})"
            self.push(PickScreen(title, choices, lambda sink: named(source, sink)))
        self.push(PickScreen("Add Route: incoming (sends data)", choices, outgoing))

    def _edit_route(self, base: int, route: str, choices: list[tuple[str, str]], record: dict[str, Any]) -> None:
        """What to change: the ends, the filter, the transform, or clear the rules (current rules shown)."""
        actions = [("Change incoming and outgoing", EDIT_ENDS)]
        actions += [(f"Set {key}  (now: {record.get(key) or 'none'})", key) for key in RULE_KEYS]
        actions.append(("Clear filter and transform", CLEAR_RULES))

        def chosen(action: str) -> None:
            if action == EDIT_ENDS:
                self._edit_ends(base, route, choices)
            elif action == CLEAR_RULES:
                self.finish(base, "Edit Route", f"/routes set {route} {CLEAR_RULES}")
            else:
                self._edit_rule(base, route, action, str(record.get(action) or ""))
        self.push(PickScreen(f"Edit Route {route}: what to change?", actions, chosen))

    def _edit_ends(self, base: int, route: str, choices: list[tuple[str, str]]) -> None:
        self.push(PickScreen(f"Edit Route {route}: new incoming", choices, lambda source: self.push(
            PickScreen(f"Edit Route {route}: new outgoing", choices,
                       lambda sink: self.finish(base, "Edit Route", f"/routes edit {route} {source} {sink}")))))

    def _edit_rule(self, base: int, route: str, key: str, current: str) -> None:
        """Prompt for the rule text (the current one to edit); the reply (set, or why the rule is refused) is shown."""
        notes = ["Forms:", *(f"  {form}" for form in SYNTAX[key]),
                 "Examples:", *(f"  {example}" for example in RULE_EXAMPLES[key])]
        prompt = PromptScreen(f"Edit Route {route}: {key}", f"{key.capitalize()}:",
                              lambda rule: self.finish(base, "Edit Route", f"/routes set {route} {key} {rule}"),
                              current, notes)
        self.push(prompt)


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
        self.shown = lines
        height, width = self.stdscr.getmaxyx()
        if full:
            self.stdscr.clear()
        else:
            self.stdscr.erase()
        for y, line in enumerate(lines[:height]):
            if not line.text:
                continue
            try:
                self.stdscr.addstr(y, 0, self.text(line.text, width), self.attr(line))
            except curses.error:
                pass  # writing the bottom-right cell moves the cursor off screen: curses draws it, then reports this
        self.stdscr.noutrefresh()
        curses.doupdate()


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
            if pressed or (dirty and now - last_draw >= FRAME_INTERVAL_S) or now - last_draw >= IDLE_REDRAW_S:
                height, width = stdscr.getmaxyx()
                painter.paint(self.interaction.render(width, height), full=self.resized)
                self.frames += 1
                self.resized = False
                dirty, last_draw = False, now
        return STOPPED

    def _wait_ms(self, dirty: bool, last_draw: float) -> int:
        """Until the next frame (a change is waiting), the clock's next repaint, a beat or a snapshot retry;
        events and keys wake us at once."""
        since = time.monotonic() - last_draw
        wait = FRAME_INTERVAL_S - since if dirty else min(IDLE_REDRAW_S - since, self.heart.due_in())
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

