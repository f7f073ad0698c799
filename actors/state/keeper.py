"""The state keeper: the one true table of peripherals, routes and config, and the only writer of the files.

Requests come through the broker (a ROUTER here, so a whole burst is read at once); each burst
is applied, written to disk once (group commit), and only then acknowledged, so an acknowledged
change survives a crash. Usage counters and liveness are written lazily: within LAZY_WRITE_DELAY_S, and a sighting
that only refreshes a known, online peripheral's last_seen within LIVENESS_WRITE_DELAY_S (a sweep every 5 s must not
rewrite the file, and wear a board's flash, every 5 s). Every change is published at once as a numbered StateUpdate
(Clone pattern).
"""
from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections import OrderedDict
from typing import Any, Callable

import msgpack
import zmq

from ..core.refusals import RefusalLog
from ..core.bus import BusPresence, publish
from .store import ConfigStore
from ..core.errors import ErrorCode, OrchestratorError
from ..core.filewatch import FolderWatch
from ..core.protocol import Op, ProtocolError, Reply, Request, StateUpdate, Topic, UpdateKind, decode_as, encode
from ..core.runner import StopFlag, run_actor
from ..core.serving import Handler, serve
from ..core.security import secure_client
from ..core.settings import CONFIG_FILE_NAME, ROUTES_FILE_NAME, Runtime, loopback_only_reason
from .tables import Change, Tables

log = logging.getLogger(__name__)

MAX_BURST = 1000
REPLY_CACHE_SIZE = 4096
LAZY_WRITE_DELAY_S = 1.0
LIVENESS_WRITE_DELAY_S = 30.0  # last_seen on disk may lag this much; replicas get it at once; a stop writes it
LAZY_OPS = {Op.SEEN.value, Op.ALIVE.value, Op.LOST.value, Op.ROUTE_USAGE.value}
SIGHTING_OPS = {Op.SEEN.value: "uuid", Op.ALIVE.value: "uuids"}  # op -> the argument naming what was sighted
REFRESHED_BY_SIGHTING = ("last_seen",)
QUIET_OPS = {Op.SNAPSHOT.value, Op.ROUTE_USAGE.value, Op.SEEN.value, Op.ALIVE.value}
CONFIG_NOTICE_REPEAT_S = 300.0  # how often a loopback-only fallback is logged again
EDIT_POLL_INTERVAL_S = 1.0  # where the kernel cannot watch the folder: how often the files are stat'ed for hand edits
CHANGES_NAMED = 10  # a hand edit's activity line names at most this many changed records


class StateKeeper:
    """Owns Tables and ConfigStore; answers requests, publishes updates, writes files."""

    def __init__(self, runtime: Runtime, context: zmq.Context, stop: StopFlag, name: str = "state") -> None:
        self.runtime = runtime
        self.context = context
        self.stop = stop
        self.name = name
        self.store = ConfigStore(runtime.config_dir)
        config, routes = self.store.load()
        self.tables = Tables(config, routes)
        self.epoch = uuidlib.uuid4().hex
        self.seq = 0
        self.reply_cache: OrderedDict[str, bytes] = OrderedDict()
        self.dropped = 0
        self.requests = 0
        self.refused = 0
        self.refusals = RefusalLog()  # a flood of refused requests gives one activity line per op and code a minute
        self.write_seconds = 0.0
        self.changed_peripherals: set[str] | None = None  # since the last save; None: render every peripheral again
        self.last_write_seconds = 0.0
        self.durable_dirty = False
        self.lazy_write_at: float | None = None  # when the pending lazy changes are written (None: none pending)
        self.notice_logged_at = time.monotonic()
        self.notes_logged = 0
        self.edits_checked_at = time.monotonic()
        self.edits = FolderWatch(runtime.config_dir, (CONFIG_FILE_NAME, ROUTES_FILE_NAME), EDIT_POLL_INTERVAL_S)
        self.hand_edits = 0
        # Each op: what it applies to the tables, and its activity line (None: "<op> done"; QUIET_OPS log nothing).
        t = self.tables
        applied = {
            Op.REGISTER: (t.register, lambda args, r: f"registered {r['name']} ({r['uuid'][:8]}) port {r['port']} "
                                                      f"-> data port {r['data_port']}"),
            Op.SEEN: (t.seen, None),
            Op.ALIVE: (t.alive, None),
            Op.LOST: (t.lost, lambda args, r: f"{r['name']} is offline"),
            Op.SET_PERIPHERAL_CONFIG: (t.set_peripheral_config, None),
            Op.SET_DELIVERY: (t.set_delivery, None),
            Op.REMOVE_PERIPHERAL: (t.remove_peripheral,
                                   lambda args, r: f"peripheral {r['peripheral']['name']} removed "
                                                   f"(routes removed: {', '.join(r['removed_routes']) or 'none'})"),
            Op.ADD_ROUTE: (t.add_route,
                           lambda args, r: f"route {r['name']} added: "
                                           f"{args.get('incoming')} -> {args.get('outgoing')}"),
            Op.EDIT_ROUTE: (t.edit_route, lambda args, r: f"route {r['name']} edited"),
            Op.REMOVE_ROUTE: (t.remove_route, lambda args, r: f"route {args.get('name')} removed"),
            Op.SET_ROUTE_RULE: (t.set_route_rule, lambda args, r: f"route {r['name']} rules: {rules_text(r)}"),
            Op.ROUTE_USAGE: (t.route_usage, None),
            Op.SET_CONFIG: (t.set_config, None),
            Op.RESET: (self._reset, lambda args, r: "orchestrator reset: peripherals and routes cleared"),
            Op.SNAPSHOT: (self._snapshot, None),
        }
        self.handlers = {op.value: self._applying(op.value, apply, line) for op, (apply, line) in applied.items()}

    # ---- lifecycle -------------------------------------------------------------------
    def run(self) -> None:
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        secure_client(self.sock, self.runtime.endpoints.state_back, self.runtime.endpoints.keys_dir)
        self.sock.connect(self.runtime.endpoints.state_back)
        self.presence = BusPresence(self.context, self.runtime.endpoints, self.name, topic=Topic.KEEPER_HEARTBEAT)
        self.pub, self.heart = self.presence.pub, self.presence.heart
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.stop.wakeup_fd(), zmq.POLLIN)
        if self.edits.fileno() is not None:
            poller.register(self.edits.fileno(), zmq.POLLIN)
        log.info("state keeper started: %d peripherals, %d routes from %s", len(self.tables.peripherals),
                 len(self.tables.routes), self.runtime.config_dir)
        for path in self.store.kept_aside:
            log.error("a corrupt config file was kept aside as %s", path)
        self._log_store_notes()
        try:
            while not self.stop.should_stop():
                ready = dict(poller.poll(self._sleep_s() * 1000 + 1))
                if self.sock in ready:
                    self._serve_burst()
                self._check_outside_edits(force=self.edits.fileno() in ready and self.edits.drain())
                if self.durable_dirty:
                    self._flush()  # an unusable hand edit: the file is written again from the running state
                self._lazy_flush()
                self._repeat_config_notice()
                self.heart.maybe_beat(self._stats())
        finally:
            self._flush()
            self.edits.close()
            self.sock.close()
            log.info("state keeper stopped")
            self.presence.close()

    def _sleep_s(self) -> float:
        """Until the next timed job: a beat, the hand-edit check, a lazy write (requests wake us at once)."""
        now = time.monotonic()
        due = [self.heart.due_in(), self.edits_checked_at + self.edits.poll_s - now]
        if self.lazy_write_at is not None:
            due.append(self.lazy_write_at - now)
        return max(0.0, min(due))

    def _stats(self) -> dict[str, Any]:
        stats = {"epoch": self.epoch, "seq": self.seq, "writes": self.store.writes, "dropped": self.dropped,
                 "requests": self.requests, "peripherals": len(self.tables.peripherals),
                 "routes": len(self.tables.routes), "hand_edits": self.hand_edits, "refused": self.refused,
                 "write_seconds": round(self.write_seconds, 4), "last_write_seconds": round(self.last_write_seconds, 5)}
        notice = self.config_notice()
        if notice:
            stats["config_notice"] = notice  # shown by `launch.py status` and the UI
        return stats

    def config_notice(self) -> str:
        """Why the ports listen on loopback only, while they still do (until bind_host is changed)."""
        return loopback_only_reason(self.tables.config)

    def _repeat_config_notice(self) -> None:
        """Repeat now and then: loopback only is unreachable from other boards, and nobody may be watching."""
        now = time.monotonic()
        if now - self.notice_logged_at >= CONFIG_NOTICE_REPEAT_S and self.config_notice():
            self.notice_logged_at = now
            log.error("%s", self.config_notice())

    # ---- requests --------------------------------------------------------------------
    def _serve_burst(self) -> None:
        """Read every waiting request, apply them, write once, then answer them all."""
        answers: list[list[bytes]] = []
        for _ in range(MAX_BURST):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            answers.append(frames[:-1] + [self._answer(frames[-1])])
        if self.durable_dirty:
            self._flush()
        for frames in answers:
            self.sock.send_multipart(frames)

    def _answer(self, body: bytes) -> bytes:
        try:
            request = decode_as(body, Request)
        except ProtocolError as exc:
            self.dropped += 1
            log.warning("dropped a malformed request: %s", exc)
            return encode(Reply(ok=False, error=f"malformed request: {exc}", code=ErrorCode.BAD_ARGUMENTS))
        cached = self.reply_cache.get(request.req_id) if request.req_id else None
        if cached is not None:
            return cached
        reply = encode(self.handle(request))
        if request.req_id:
            self.reply_cache[request.req_id] = reply
            if len(self.reply_cache) > REPLY_CACHE_SIZE:
                self.reply_cache.popitem(last=False)
        return reply

    def handle(self, request: Request) -> Reply:
        """Apply one request to the tables; publish its changes; return the reply."""
        self.requests += 1
        return serve(request, self.handlers, self._refused)[0]

    def _applying(self, op: str, apply: Callable[[dict[str, Any]], tuple[Any, list[Change]]],
                  activity: Callable[[dict[str, Any], Any], str] | None) -> Handler:
        """A handler applying op to the tables: publishes its changes, schedules their write, logs its line."""
        def run(request: Request) -> Any:
            args = request.args
            before = self._sighted(op, args)
            result, changes = apply(args)
            if changes:
                self._publish(changes)
                if op in LAZY_OPS:
                    delay = LIVENESS_WRITE_DELAY_S if refreshed_only(changes, before) else LAZY_WRITE_DELAY_S
                    self._write_lazily_within(delay)
                else:
                    self.durable_dirty = True
                if op not in QUIET_OPS:
                    log.info("%s", activity(args, result) if activity is not None else f"{op} done")
            return result
        return Handler(run, activity)

    def _refused(self, op: str, exc: OrchestratorError) -> None:
        """Count a refused request; log it, at most once a minute per op and error code (a client may flood us)."""
        self.refused += 1
        if op in QUIET_OPS:
            return
        quiet = self.refusals.should_report(op, str(int(exc.code)))
        if quiet is not None:
            log.warning("%s refused: %s%s", op, exc, f" ({quiet} more since the last report)" if quiet else "")

    def _publish(self, changes: list[Change]) -> None:
        for kind, key, value in changes:
            if self.changed_peripherals is not None:
                if kind == UpdateKind.PERIPHERAL.value:
                    self.changed_peripherals.add(key)
                elif kind == UpdateKind.RESET.value:
                    self.changed_peripherals = None
            self.seq += 1
            publish(self.pub, Topic.STATE, StateUpdate(epoch=self.epoch, seq=self.seq, kind=kind, key=key, value=value))

    def _snapshot(self, _: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        return {"epoch": self.epoch, "seq": self.seq, **self.tables.snapshot()}, []

    def _reset(self, _: dict[str, Any]) -> tuple[dict[str, Any], list[Change]]:
        backup = self.store.backup()
        log.warning("reset: previous files backed up in %s", backup)
        result, changes = self.tables.reset()
        return {"config": result, "backup": str(backup)}, changes

    # ---- files -----------------------------------------------------------------------
    def _log_store_notes(self) -> None:
        """Log (and so show in the activity) what the store found while loading or merging, once each."""
        for level, line in self.store.notes[self.notes_logged:]:
            log.log(level, "%s", line)
        self.notes_logged = len(self.store.notes)

    def _check_outside_edits(self, force: bool = False) -> None:
        """A stat of both files when the folder watch says so (or its poll is due); an edited file is validated,
        merged with the running state, published and logged."""
        now = time.monotonic()
        if not force and now - self.edits_checked_at < self.edits.poll_s:
            return
        self.edits_checked_at = now
        edited = self.store.edited_outside()
        if not edited:
            return
        edit = self.store.merge_outside_edits(self.tables.config_document(), self.tables.routes_document())
        self._log_store_notes()
        if edit.config is not None or edit.routes is not None:
            config = edit.config if edit.config is not None else self.tables.config_document()
            routes = edit.routes if edit.routes is not None else self.tables.routes_document()
            changes = self.tables.load_documents(config, routes)
            self.hand_edits += 1
            self.changed_peripherals = None  # the edit may touch any peripheral: the next write renders them all
            self._publish(changes)
            log.info("%s edited by hand: %s", " and ".join(p.name for p in edited), describe_changes(changes))
        if edit.rewrite:
            self.durable_dirty = True

    def _sighted(self, op: str, args: dict[str, Any]) -> dict[str, bytes]:
        """For a sighting: each sighted known record as it stands, but for what a sighting refreshes."""
        name = SIGHTING_OPS.get(op)
        if name is None:
            return {}
        sighted = args.get(name)
        uuids = sighted if isinstance(sighted, list) else [sighted]
        known = self.tables.peripherals
        return {uuid: fingerprint(known[uuid]) for uuid in uuids if isinstance(uuid, str) and uuid in known}

    def _write_lazily_within(self, delay_s: float) -> None:
        due = time.monotonic() + delay_s
        self.lazy_write_at = due if self.lazy_write_at is None else min(self.lazy_write_at, due)

    def _lazy_flush(self) -> None:
        if self.lazy_write_at is not None and time.monotonic() >= self.lazy_write_at:
            self._flush()

    def _flush(self) -> None:
        if not self.durable_dirty and self.lazy_write_at is None:
            return
        self._check_outside_edits(force=True)  # merge an unread hand edit first, so this write does not undo it
        began = time.perf_counter()
        try:
            self.store.save(self.tables.config_document(), self.tables.routes_document(), self.changed_peripherals)
        except OSError as exc:
            log.error("could not write config files: %s (will retry)", exc)
            return
        self.changed_peripherals = set()
        self.last_write_seconds = time.perf_counter() - began
        self.write_seconds += self.last_write_seconds
        self.durable_dirty = False
        self.lazy_write_at = None


def fingerprint(record: dict[str, Any]) -> bytes:
    """A peripheral record but for the fields a sighting refreshes, to tell a mere sighting from a change."""
    return msgpack.packb({k: v for k, v in record.items() if k not in REFRESHED_BY_SIGHTING}, use_bin_type=True)


def refreshed_only(changes: list[Change], before: dict[str, bytes]) -> bool:
    """Whether these changes only refreshed the sighting fields of records that were known (and stay as they were)."""
    return bool(before) and all(kind == UpdateKind.PERIPHERAL.value and key in before
                                and fingerprint(value) == before[key] for kind, key, value in changes)


def describe_changes(changes: list[Change]) -> str:
    """What a hand edit changed, for one activity line."""
    if not changes:
        return "nothing to change"
    named = [f"{kind} {key or ''} {'removed' if value is None else 'set'}".replace("  ", " ")
             for kind, key, value in changes[:CHANGES_NAMED]]
    more = f" and {len(changes) - CHANGES_NAMED} more" if len(changes) > CHANGES_NAMED else ""
    return ", ".join(named) + more


def rules_text(route: dict[str, Any]) -> str:
    """A route's rules for its activity line ("filter '...', transform '...'", or "none")."""
    return ", ".join(f"{k} {route[k]!r}" for k in ("filter", "transform") if route.get(k)) or "none"


def main(argv: list[str] | None = None) -> int:
    return run_actor("state", StateKeeper, argv)

