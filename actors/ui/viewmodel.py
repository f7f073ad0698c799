"""What the terminal UI shows, as plain lines: state + activity + actor status in, screen lines out.

Pure functions and small dataclasses, no curses and no sockets, so every layout rule (truncation,
scrolling, section sizes, colour families, small terminals) is unit-tested without a terminal.
Every function that returns lines returns at most ``height`` lines, none wider than ``width``
terminal cells, so the renderer can draw them without ever wrapping.
"""
from __future__ import annotations

import functools
import itertools
import textwrap
import time
import unicodedata
import zlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Iterable, Sequence, overload

from ..core.durations import SECONDS_PER_DAY, SECONDS_PER_HOUR, SECONDS_PER_MINUTE, short_duration, with_uptime
from ..core.records import BY_PORT_MARKER
from ..core.rules import RULE_KEYS

MIN_WIDTH = 40
MIN_HEIGHT = 10
PALETTE_SIZE = 6  # distinct colours for peripheral families (the renderer maps them to curses colours)
ELLIPSIS = "…"
ARROW = "→"
PAGE_OVERLAP_ROWS = 1
OFFLINE, ONLINE = "offline", "online"
FOOTER_KEYS = "m menu  : command  Tab section  ↑↓ PgUp PgDn Home End scroll  d detach  q quit"
# Column widths (cells) of the fixed columns; the name columns take what is left.
PORT_W, STATUS_W, AGE_W, COUNT_W, RATE_W = 5, 7, 9, 9, 8
TIME_W, ACTOR_W = 8, 9
RULE_MARKER = "*"  # after a route's name when it has a filter or transform


class Style(str, Enum):
    """How a line looks; the renderer turns these into curses attributes (or plain text)."""

    NORMAL = "normal"
    TITLE = "title"
    HEADER = "header"
    FOCUSED_HEADER = "focused_header"
    DIM = "dim"
    ALERT = "alert"
    SELECTED = "selected"
    FOOTER = "footer"


class Section(str, Enum):
    PERIPHERALS = "peripherals"
    ROUTES = "routes"
    ACTIVITY = "activity"


SECTION_ORDER = (Section.PERIPHERALS, Section.ROUTES, Section.ACTIVITY)


@dataclass(frozen=True)
class Line:
    """One screen row: its text (already fitted to the width), a style, and a colour family index or None."""

    text: str
    style: Style = Style.NORMAL
    colour: int | None = None


@dataclass
class ActorStatus:
    """What the last heartbeat of one actor said."""

    name: str
    last_beat: float  # monotonic seconds
    started_at: float  # wall clock
    pid: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    host: str = ""  # the board it runs on (satellites: launch.py --join)
    expiry_s: float = 3.0  # silent this long after last_beat: not alive (its beat says)


@dataclass(frozen=True)
class ActivityLine:
    ts: float
    actor: str
    level: str
    text: str


@dataclass
class Model:
    """Everything the overview needs, gathered by the UI from its replica and the bus."""

    script_uuid: str = ""
    peripherals: Sequence[dict[str, Any]] = ()
    routes: Sequence[dict[str, Any]] = ()
    activity: Sequence[ActivityLine] = ()
    actors: dict[str, ActorStatus] = field(default_factory=dict)
    connected: bool = False
    ever_connected: bool = False
    silent_for_s: float = 0.0
    now: float = field(default_factory=time.time)
    now_mono: float = field(default_factory=time.monotonic)
    alive_within_s: float = 3.0


@dataclass(frozen=True)
class Scroll:
    """Which section has the keys, and how far each is scrolled (activity counts from its newest line)."""

    focus: Section = Section.PERIPHERALS
    offsets: tuple[int, int, int] = (0, 0, 0)

    def offset(self, section: Section) -> int:
        return self.offsets[SECTION_ORDER.index(section)]

    def with_offset(self, section: Section, value: int) -> "Scroll":
        offsets = list(self.offsets)
        offsets[SECTION_ORDER.index(section)] = max(0, value)
        return replace(self, offsets=tuple(offsets))

    def next_focus(self) -> "Scroll":
        return replace(self, focus=SECTION_ORDER[(SECTION_ORDER.index(self.focus) + 1) % len(SECTION_ORDER)])


@dataclass
class Frame:
    """The lines to draw, plus the scroll state clamped to what the content allows."""

    lines: list[Line]
    scroll: Scroll
    page_rows: dict[Section, int] = field(default_factory=dict)


# ---- text --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def char_width(char: str) -> int:
    """Terminal cells one character takes: 2 for wide East Asian, 0 for combining marks."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


@functools.lru_cache(maxsize=1024)
def cell_width(text: str) -> int:
    """Terminal cells a text takes (the same lines come back every repaint, hence the cache)."""
    if text.isascii():
        return len(text)  # the common case, without a lookup per character (the clock repaints every second)
    return sum(char_width(c) for c in text)


def clean(text: Any) -> str:
    """Printable text only: control characters (escapes, tabs, newlines) from the outside become spaces or '?'."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else (" " if c in "\t\r\n" else "?") for c in text)


def fit(text: Any, width: int, pad: bool = False) -> str:
    """Cut text to width cells, marking a cut with an ellipsis; pad with spaces when asked."""
    text = clean(text)
    if width <= 0:
        return ""
    if cell_width(text) <= width:
        return text + " " * (width - cell_width(text)) if pad else text
    if text.isascii():  # the common case: one slice, not a lookup per character (every repaint fits every line)
        return text[: width - 1] + ELLIPSIS
    out, used = [], 0
    for char in text:
        w = char_width(char)
        if used + w > width - 1:
            break
        out.append(char)
        used += w
    result = "".join(out) + ELLIPSIS
    return result + " " * (width - used - 1) if pad else result


def columns(parts: Iterable[tuple[Any, int, str]]) -> str:
    """Join (text, width, align) cells with one space; align is '<' or '>'."""
    cells = []
    for text, width, align in parts:
        cell = fit(text, width)
        gap = " " * (width - cell_width(cell))
        cells.append(gap + cell if align == ">" else cell + gap)
    return " ".join(cells)


def age(seconds_ago: float | None) -> str:
    """A short relative time: 'now', '12s ago', '5m ago', '3h ago', '2d ago' ('never' for None)."""
    if seconds_ago is None:
        return "never"
    seconds = max(0, int(seconds_ago))
    if seconds < 1:
        return "now"
    for unit, size in (("d", SECONDS_PER_DAY), ("h", SECONDS_PER_HOUR), ("m", SECONDS_PER_MINUTE)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def since(ts: Any, now: float) -> str:
    return age(now - ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > 0 else "never"


def duration(seconds: float) -> str:
    """Uptime as 'H:MM:SS', with days in front once it passes one."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, SECONDS_PER_DAY)
    hours, rest = divmod(rest, SECONDS_PER_HOUR)
    minutes, secs = divmod(rest, SECONDS_PER_MINUTE)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def rate(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return "-"
    return f"{value:,.0f}/s" if value >= 100 else f"{value:.1f}/s"


# ---- colours -----------------------------------------------------------------------------
def colour_family(name: str) -> str:
    """The family of a peripheral name: its first word ('LLM_Engine_2' -> 'llm'), so numbered copies share a colour."""
    head = name.strip().split("_", 1)[0].split("-", 1)[0]
    return (head or name).lower()


def colour_index(name: str, palette_size: int = PALETTE_SIZE) -> int:
    """A stable palette index per family (crc32, not hash(): the same on every run and machine)."""
    return zlib.crc32(colour_family(name).encode()) % palette_size


# ---- layout helpers ------------------------------------------------------------------------
def allocate(available: int, needs: Sequence[int]) -> list[int]:
    """Share rows between sections: one row at a time, round robin, never more than a section needs."""
    sizes = [0] * len(needs)
    remaining = max(0, available)
    while remaining > 0:
        grew = False
        for i, need in enumerate(needs):
            if remaining and sizes[i] < need:
                sizes[i] += 1
                remaining -= 1
                grew = True
        if not grew:
            break
    return sizes


def clamp_offset(offset: int, total: int, visible: int) -> int:
    return max(0, min(offset, total - visible)) if visible > 0 else 0


def window(total: int, visible: int, offset: int, from_end: bool) -> tuple[int, int]:
    """The [start, stop) slice shown; from_end counts the offset back from the newest row."""
    offset = clamp_offset(offset, total, visible)
    if from_end:
        stop = total - offset
        return max(0, stop - visible), stop
    return offset, min(total, offset + visible)


def too_small(width: int, height: int) -> list[Line]:
    """What a terminal smaller than MIN_WIDTH x MIN_HEIGHT shows: enough to know why, and how to leave."""
    texts = [f"terminal too small ({width}x{height})", f"need {MIN_WIDTH}x{MIN_HEIGHT}", "q quit  d detach"]
    return [Line(fit(t, width), Style.ALERT if i == 0 else Style.NORMAL) for i, t in enumerate(texts[:max(0, height)])]


# ---- overview --------------------------------------------------------------------------------
def launched_rows(model: Model) -> list[dict[str, Any]]:
    """The peripherals the supervisor launched (peripherals.toml), from its heartbeat."""
    supervisor = model.actors.get("supervisor")
    rows = supervisor.stats.get("peripherals") if supervisor is not None else None
    return [with_uptime(row, model.now) for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def process_label(row: dict[str, Any]) -> str:
    """`[running pid 123 up 3m12s r2 exit 3]`: a launched peripheral's process, next to its registration."""
    parts = [str(row.get("state", "?"))]
    parts += [f"pid {row['pid']}"] if row.get("pid") else []
    uptime = short_duration(row.get("uptime_s"))
    parts += [f"up {uptime}"] if uptime is not None else []
    parts += [f"r{row['restarts']}"] if row.get("restarts") else []
    parts += [f"exit {row['last_exit']}"] if row.get("last_exit") is not None else []
    parts += ["NOT REGISTERED"] if row.get("not_registered") else []
    return "[" + " ".join(parts) + "]"


def unjoined_rows(launched: Sequence[dict[str, Any]], joined: set[str], name_w: int, width: int) -> list[Line]:
    """Launched peripherals with no registration yet: their process state, flagged when something is wrong."""
    rows = []
    for row in launched:
        if row.get("peripheral") in joined:
            continue
        text = columns([(f"{row.get('name', '?')} {process_label(row)}", name_w, "<"), ("-", PORT_W, ">"),
                        ("launch", STATUS_W, "<"), ("", AGE_W, ">")])
        bad = row.get("state") == "failed" or row.get("not_registered")
        rows.append(Line(fit(text, width), Style.ALERT if bad else Style.DIM, colour_index(str(row.get("name", "")))))
    return rows


def peripheral_rows(peripherals: Sequence[dict[str, Any]], width: int, now: float,
                    launched: Sequence[dict[str, Any]] = ()) -> tuple[str, list[Line]]:
    """Header text and rows, sorted by name, each coloured by its family; launched ones show their process."""
    name_w = max(1, width - (PORT_W + STATUS_W + AGE_W + 3))
    by_name = {row.get("peripheral"): row for row in launched if row.get("peripheral")}
    rows = []
    for p in sorted(peripherals, key=lambda p: str(p.get("name", ""))):
        name = str(p.get("name", "?"))
        status = ONLINE if p.get("online") else OFFLINE
        shown = f"{name} {process_label(by_name[name])}" if name in by_name else name
        text = columns([(shown, name_w, "<"), (p.get("port") if p.get("port") is not None else "-", PORT_W, ">"),
                        (status, STATUS_W, "<"), (since(p.get("last_seen"), now), AGE_W, ">")])
        rows.append(Line(fit(text, width), Style.NORMAL if p.get("online") else Style.DIM, colour_index(name)))
    rows += unjoined_rows(launched, {str(p.get("name")) for p in peripherals}, name_w, width)
    online = sum(1 for p in peripherals if p.get("online"))
    header = columns([(f"PERIPHERALS {online}/{len(peripherals)} online", name_w, "<"), ("PORT", PORT_W, ">"),
                      ("STATUS", STATUS_W, "<"), ("LAST SEEN", AGE_W, ">")])
    return header, rows


def route_rows(routes: Sequence[dict[str, Any]], names: dict[str, str], width: int,
               now: float) -> tuple[str, list[Line]]:
    """Header text and rows: name, from → to (peripheral names), last used, messages, rate.

    LOST once any route lost payloads.
    """
    lossy = any(r.get("dropped") for r in routes)
    lost_w = COUNT_W + 1 if lossy else 0
    flexible = max(2, width - (AGE_W + COUNT_W + RATE_W + 4 + lost_w))
    name_w = max(1, flexible // 3)
    path_w = max(1, flexible - name_w)
    rows = []
    for r in sorted(routes, key=lambda r: str(r.get("name", ""))):
        source = end_label(names, r.get("incoming"), r.get("incoming_port"))
        sink = end_label(names, r.get("outgoing"), r.get("outgoing_port"))
        lost = [(count(r.get("dropped")) if r.get("dropped") else "-", COUNT_W, ">")] if lossy else []
        text = columns([(route_label(r, name_w), name_w, "<"), (f"{source} {ARROW} {sink}", path_w, "<"),
                        (since(r.get("last_used"), now), AGE_W, ">"), (count(r.get("messages")), COUNT_W, ">"),
                        *lost, (rate(r.get("rate")), RATE_W, ">")])
        rows.append(Line(fit(text, width), Style.ALERT if r.get("dropped") else Style.NORMAL))
    legend = f" ({RULE_MARKER} rules)" if any(has_rules(r) for r in routes) else ""
    lost_header = [("LOST", COUNT_W, ">")] if lossy else []
    header = columns([(f"ROUTES {len(routes)}{legend}", name_w, "<"), (f"FROM {ARROW} TO", path_w, "<"),
                      ("LAST USED", AGE_W, ">"), ("MESSAGES", COUNT_W, ">"), *lost_header, ("RATE", RATE_W, ">")])
    return header, rows


def has_rules(route: dict[str, Any]) -> bool:
    return any(route.get(key) for key in RULE_KEYS)


def end_label(names: dict[str, str], uuid: Any, port: Any) -> str:
    """A route end by its peripheral's name; one no peripheral has works from the route's own port (as the original)."""
    if uuid in names:
        return names[uuid]
    return f"{str(uuid or '?')[:8]}:{port} {BY_PORT_MARKER}"


def route_label(route: dict[str, Any], width: int) -> str:
    """The route's name, with the rules marker kept visible even when the name is cut."""
    name = clean(route.get("name", "?"))
    if not has_rules(route):
        return name
    return fit(name, max(0, width - cell_width(RULE_MARKER))) + RULE_MARKER


def activity_rows(activity: Sequence[ActivityLine], width: int) -> tuple[str, Sequence[Line]]:
    """Oldest first, so the newest line sits at the bottom like a log."""
    return f"RECENT ACTIVITY {len(activity)}", ActivityRows(activity, width)


class ActivityRows(Sequence[Line]):
    """The log's rows, formatted only when shown: the UI keeps thousands of lines, a screen shows a few, and it is
    repainted once a second for the clock."""

    def __init__(self, activity: Sequence[ActivityLine], width: int) -> None:
        self.activity = activity
        self.width = width

    def __len__(self) -> int:
        return len(self.activity)

    @overload
    def __getitem__(self, index: int) -> Line: ...

    @overload
    def __getitem__(self, index: slice) -> list[Line]: ...

    def __getitem__(self, index: int | slice) -> Line | list[Line]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self.activity))
            return [activity_row(item, self.width) for item in itertools.islice(self.activity, start, stop, step)]
        return activity_row(self.activity[index], self.width)


@functools.lru_cache(maxsize=256)  # a screenful or two of lines, at one width
def activity_row(item: ActivityLine, width: int) -> Line:
    """One log line as shown (it never changes)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(item.ts))
    text = f"{stamp} {fit(item.actor, ACTOR_W - 1, pad=True)} {clean(item.text)}"
    style = Style.ALERT if item.level in ("WARNING", "ERROR", "CRITICAL") else Style.NORMAL
    return Line(fit(text, width), style)


def title_line(model: Model, width: int) -> Line:
    uptime = uptime_s(model)
    up = f"up {duration(uptime)}" if uptime is not None else "up -"
    return Line(fit(f" Orchestrator {model.script_uuid or '-'}  {up}", width, pad=True), Style.TITLE)


def uptime_s(model: Model) -> float | None:
    """Since the supervisor started (or the oldest live actor, when no supervisor beats)."""
    alive = [a for a in model.actors.values() if model.now_mono - a.last_beat <= a.expiry_s]
    if not alive:
        return None
    chosen = [a for a in alive if a.name == "supervisor"] or alive
    return model.now - min(a.started_at for a in chosen)


def status_line(model: Model, width: int) -> Line:
    """Which actors are alive and their key counters, or why nothing is shown."""
    if not model.connected:
        if model.ever_connected or model.silent_for_s >= model.alive_within_s:
            silent = age(model.silent_for_s).replace(" ago", "")
            return Line(fit(f"orchestrator not reachable — reconnecting ({silent} silent)", width), Style.ALERT)
        return Line(fit("connecting to orchestrator…", width), Style.DIM)
    notice = next((a.stats["config_notice"] for a in model.actors.values() if a.stats.get("config_notice")), "")
    if notice:  # e.g. ports on loopback only after an unreadable orch.cf: more important than the counters
        return Line(fit(f"WARNING: {notice}", width), Style.ALERT)
    alive = sorted((a for a in model.actors.values() if model.now_mono - a.last_beat <= a.expiry_s),
                   key=lambda a: a.name)
    parts = [f"actors {len(alive)}: {actors_by_host(alive)}"]
    delivered = [a.stats.get("delivered") for a in model.actors.values() if a.name.startswith("router")]
    numbers = [d for d in delivered if isinstance(d, int) and not isinstance(d, bool)]
    if numbers:
        parts.append(f"delivered {sum(numbers):,}")
    scanner = model.actors.get("scanner")
    if scanner is not None and "last_scan" in scanner.stats:
        parts.append(f"last scan {since(scanner.stats.get('last_scan'), model.now)}")
    degraded = degraded_reasons(model)
    if degraded is not None:
        return Line(fit(" | ".join([degraded, *parts]), width), Style.ALERT)
    return Line(fit(" | ".join(parts), width))


def degraded_reasons(model: Model) -> str | None:
    """"degraded: <why>" while the (live) supervisor says an actor is down, backing off or failed, or a port is held.

    Else None.
    """
    supervisor = model.actors.get("supervisor")
    if (supervisor is None or model.now_mono - supervisor.last_beat > supervisor.expiry_s
            or supervisor.stats.get("health") != "degraded"):
        return None
    reasons = supervisor.stats.get("reasons")
    listed = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) and reasons else "see launch.py status"
    return f"degraded: {listed}"


def actors_by_host(alive: list[ActorStatus]) -> str:
    """Actor names; grouped "on <host>" when they run on more than one board."""
    hosts: dict[str, list[str]] = {}
    for actor in alive:
        hosts.setdefault(actor.host, []).append(actor.name)
    if len(hosts) <= 1:
        return " ".join(a.name for a in alive)
    largest_first = sorted(hosts.items(), key=lambda item: -len(item[1]))
    return "; ".join(f"{' '.join(names)} on {host or '?'}" for host, names in largest_first)


def overview(model: Model, width: int, height: int, scroll: Scroll = Scroll(), footer: str | None = None) -> Frame:
    """The main screen: title, status, three scrollable sections, and the footer (or a command line)."""
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return Frame(too_small(width, height), scroll)
    names = {p.get("uuid", ""): str(p.get("name", "?")) for p in model.peripherals}
    inner = width - 1  # rows are indented one cell, under the header's focus marker
    sections = {
        Section.PERIPHERALS: peripheral_rows(model.peripherals, inner, model.now, launched_rows(model)),
        Section.ROUTES: route_rows(model.routes, names, inner, model.now),
        Section.ACTIVITY: activity_rows(model.activity, inner),
    }
    body = height - 3 - len(SECTION_ORDER)  # title, status, footer, one header per section
    sizes = allocate(body, [max(1, len(sections[s][1])) for s in SECTION_ORDER])
    sizes[-1] += max(0, body - sum(sizes))  # spare rows go to the activity log, so the footer stays at the bottom
    lines = [title_line(model, width), status_line(model, width)]
    page_rows: dict[Section, int] = {}
    for section, size in zip(SECTION_ORDER, sizes):
        header, rows = sections[section]
        offset = clamp_offset(scroll.offset(section), len(rows), size)
        scroll = scroll.with_offset(section, offset)
        start, stop = window(len(rows), size, offset, from_end=section is Section.ACTIVITY)
        page_rows[section] = size
        lines.append(section_header(header, start, stop, len(rows), section is scroll.focus, width))
        shown = [Line(" " + row.text, row.style, row.colour) for row in rows[start:stop]]
        lines.extend(shown + [Line("")] * (size - len(shown)))
    footer_text = footer if footer is not None else FOOTER_KEYS
    lines.append(Line(fit(footer_text, width, pad=True), Style.FOOTER))
    return Frame(lines[:height], scroll, page_rows)


def section_header(text: str, start: int, stop: int, total: int, focused: bool, width: int) -> Line:
    """Column labels, with 'a-b of n' on the right when not every row fits."""
    marker = "▸" if focused else " "
    position = f" {start + 1}-{stop} of {total} " if total > stop - start else ""
    left = fit(marker + text, max(0, width - cell_width(position)), pad=True)
    return Line(fit(left + position, width, pad=True), Style.FOCUSED_HEADER if focused else Style.HEADER)


# ---- menus and dialogs ---------------------------------------------------------------------
def list_screen(title: str, options: Sequence[str], selected: int, width: int, height: int, hint: str) -> list[Line]:
    """A titled list with one selected row kept in view (menus and pickers)."""
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return too_small(width, height)
    visible = max(1, height - 3)
    selected = max(0, min(selected, len(options) - 1))
    start = clamp_offset(selected - visible // 2, len(options), visible)
    position = f" {selected + 1}/{len(options)}" if len(options) > visible else ""
    lines = [Line(fit(f" {title}{position}", width, pad=True), Style.TITLE), Line("")]
    for i in range(start, min(len(options), start + visible)):
        style = Style.SELECTED if i == selected else Style.NORMAL
        lines.append(Line(fit(f" {options[i]}", width, pad=i == selected), style))
    lines.extend([Line("")] * (height - 1 - len(lines)))
    lines.append(Line(fit(hint, width, pad=True), Style.FOOTER))
    return lines[:height]


def text_screen(title: str, text: str, offset: int, width: int, height: int, hint: str) -> tuple[list[Line], int]:
    """A reply or message, wrapped to the width and scrollable; returns the lines and the clamped offset."""
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return too_small(width, height), 0
    wrapped: list[str] = []
    for raw in clean_lines(text):
        wrapped.extend(textwrap.wrap(raw, max(1, width - 2), replace_whitespace=False, drop_whitespace=False) or [""])
    visible = max(1, height - 3)
    offset = clamp_offset(offset, len(wrapped), visible)
    last = min(len(wrapped), offset + visible)
    position = f" {offset + 1}-{last} of {len(wrapped)}" if len(wrapped) > visible else ""
    lines = [Line(fit(f" {title}{position}", width, pad=True), Style.TITLE), Line("")]
    lines.extend(Line(fit(f" {row}", width)) for row in wrapped[offset:offset + visible])
    lines.extend([Line("")] * (height - 1 - len(lines)))
    lines.append(Line(fit(hint, width, pad=True), Style.FOOTER))
    return lines[:height], offset


def clean_lines(text: str) -> list[str]:
    if not text:
        return ["(empty reply)"]
    return [clean(row.replace("\t", "    ")) for row in str(text).rstrip("\n").split("\n")]


def prompt_screen(title: str, prompt: str, buffer: str, width: int, height: int, hint: str,
                  notes: Sequence[str] = ()) -> list[Line]:
    """A one-line text entry (the end of a long entry stays visible), with optional help lines below it."""
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return too_small(width, height)
    room = max(1, width - cell_width(prompt) - 3)
    shown = clean(buffer)
    while cell_width(shown) > room - 1:
        shown = shown[1:]
    lines = [Line(fit(f" {title}", width, pad=True), Style.TITLE), Line(""), Line(fit(f" {prompt} {shown}_", width))]
    if notes:
        lines.append(Line(""))
        room_for_notes = max(0, height - 1 - len(lines))  # the hint row stays at the bottom
        lines.extend(Line(fit(f" {note}", width), Style.DIM) for note in list(notes)[:room_for_notes])
    lines.extend([Line("")] * (height - 1 - len(lines)))
    lines.append(Line(fit(hint, width, pad=True), Style.FOOTER))
    return lines[:height]


def as_command(typed: str) -> str:
    """What the ':' line sends: `help` and `/help` alike become `/help`; nothing typed sends nothing."""
    line = typed.strip().lstrip("/")
    return f"/{line}" if line else ""


def command_footer(buffer: str, width: int) -> str:
    """The ':' command line in the footer row, scrolled so the cursor end stays visible."""
    shown = clean(buffer)
    while shown and cell_width(shown) > width - 3:
        shown = shown[1:]
    return f":{shown}_"
