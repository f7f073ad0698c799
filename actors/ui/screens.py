"""The UI's behaviour without a terminal: keys in, lines out.

``Interaction`` keeps a stack of modal screens (menu, pick lists, prompts, confirmations, replies) over
the overview and the ':' command line, and turns keys into commands it hands to ``send``; it reads the
system through ``model_source`` (a ``viewmodel.Model``). Nothing here touches curses' screen, so the
tests drive it directly.
"""
from __future__ import annotations

import curses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

from ..core.rules import FILTER_KEY, RULE_KEYS, SYNTAX, TRANSFORM_KEY
from . import viewmodel as vm

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


def normalise_key(key: Key) -> Key:
    """Control characters as ints, printable characters as one-character strings."""
    if isinstance(key, str) and len(key) == 1 and (ord(key) < 32 or ord(key) == KEY_DEL):
        return ord(key)
    return key


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
