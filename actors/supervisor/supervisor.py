"""The supervisor: starts every actor as its own process, restarts the ones that die, stops them all.

Restarts back off exponentially (capped at BACKOFF_MAX_S). A child that crashes FLAP_LIMIT times
within FLAP_WINDOW_S is reported and left stopped while the rest keep running, unless the system
cannot work without it: the broker, the state keeper, the gateway and the last live router are
restarted for as long as it takes. ``status`` says "degraded" (with the reasons) while any actor
is down, backing off, failed or silent, or the gateway cannot bind a port. One lock file per config folder keeps a
second instance away. A REP socket on ``endpoints.control`` answers status / stop / scale.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zmq

from ..core.bus import LIVENESS_TOPICS, BusPresence, Heartbeater, beat_expiry, connect_subscriber, parse_event
from ..core.errors import BadArguments, ErrorCode
from .lastbeats import LastBeats
from .peripherals import PeripheralManager
from ..core.protocol import Activity, Heartbeat, Op, ProtocolError, Reply, Request, Topic, decode_as, encode
from ..core.security import secure_server, start_authenticator
from ..core.runner import console_handler
from ..core.serving import Handler, serve
from ..core.settings import HEARTBEAT_EXPIRY_S, LOCK_FILE_NAME, Runtime

log = logging.getLogger("supervisor")

REPO_ROOT = Path(__file__).resolve().parents[2]  # actors/supervisor/ -> the checkout
ACTOR_MODULES = {"broker": "broker", "state": "actors.state", "gateway": "actors.gateway", "scanner": "actors.scanner",
                 "router": "actors.router", "ui": "actors.ui"}
DEFAULT_ACTORS = ("broker", "state", "gateway", "router", "scanner")
MAX_ROUTERS = 16
DEFAULT_ROUTERS = 1
ESSENTIAL_KINDS = frozenset({"broker", "state", "gateway"})  # never given up on (nor the last live router)

BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 5.0
STABLE_AFTER_S = 10.0
FLAP_WINDOW_S = 30.0
FLAP_LIMIT = 6
MAX_BACKOFF_DOUBLINGS = 16  # 2**16 * BACKOFF_BASE_S is far past BACKOFF_MAX_S: keeps the power small
STARTUP_GRACE_S = 15.0
HANG_TIMEOUT_S = HEARTBEAT_EXPIRY_S * 4  # above an idle beat's expiry (IDLE_HEARTBEAT_INTERVAL_S x liveness)
STOP_GRACE_S = 3.0
WAKEUP_READ_BYTES = 4096
ACTIVITY_HISTORY = 500  # activity lines kept for a UI that attaches later
REMOTE_FORGET_S = 60.0  # an actor of another supervisor silent this long leaves the status table


class AlreadyRunning(RuntimeError):
    """Another supervisor holds the lock of this config folder."""


@dataclass
class Child:
    """One supervised actor process and its restart bookkeeping."""

    name: str
    kind: str
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    next_start: float = 0.0
    failed: bool = False
    last_heartbeat: float | None = None
    heartbeat: dict[str, Any] = field(default_factory=dict)
    expiry_s: float = HEARTBEAT_EXPIRY_S  # what its last beat said
    attached: bool = False  # the UI: shares our terminal, is not restarted when it detaches

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        """Not reaped yet. Each loop pass reaps (``Supervisor._check_children`` polls every child once, and a
        child's exit wakes the loop with SIGCHLD), so the health and status built in that pass need no
        system call per question."""
        return self.process is not None and self.process.returncode is None

    @property
    def ready(self) -> bool:
        """Heard from since its latest start (a restarted child is not ready on its predecessor's heartbeat)."""
        return self.last_heartbeat is not None and self.last_heartbeat >= self.started_at

    def state(self) -> str:
        if self.failed:
            return "failed"
        if self.alive:
            return "running"
        return "backoff" if self.process is None and self.next_start > time.monotonic() else "stopped"

    def describe(self, now: float) -> dict[str, Any]:
        age = None if self.last_heartbeat is None else round(now - self.last_heartbeat, 2)
        return {"name": self.name, "kind": self.kind, "pid": self.pid if self.alive else None, "state": self.state(),
                "restarts": self.restarts, "heartbeat_age_s": age, "ready": self.ready,
                "host": self.heartbeat.get("host"), "stats": self.heartbeat.get("stats", {})}

    def problem(self, now: float) -> str | None:
        """Why this child does not count as up (None when it does): the reason shown by a degraded status."""
        if self.failed:
            return (f"{self.name} failed "
                    f"(crashed {len(self.crash_times)} times within {FLAP_WINDOW_S:.0f}s; left stopped)")
        if not self.alive:
            wait = max(0.0, self.next_start - time.monotonic())
            return f"{self.name} down (restart in {wait:.1f}s)" if wait else f"{self.name} down (restarting)"
        if not self.ready:
            return f"{self.name} starting (no heartbeat yet)"
        if now - self.last_heartbeat > self.expiry_s:
            return f"{self.name} silent for {now - self.last_heartbeat:.0f}s"
        return None


@dataclass
class RemoteActor:
    """An actor heard on the bus that another supervisor runs (a satellite's router, or the main board's actors)."""

    name: str
    host: str
    pid: int
    last_heartbeat: float
    stats: dict[str, Any] = field(default_factory=dict)
    reported_lost: bool = False
    expiry_s: float = HEARTBEAT_EXPIRY_S

    def live(self, now: float) -> bool:
        return now - self.last_heartbeat <= self.expiry_s

    def describe(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "pid": self.pid, "state": "running" if self.live(now) else "lost",
                "heartbeat_age_s": round(now - self.last_heartbeat, 2), "stats": self.stats}


def acquire_lock(config_dir: Path) -> IO[str]:
    """Hold an exclusive lock on <config>/orch.lock for the life of this process (freed by the kernel on death)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    handle = open(config_dir / LOCK_FILE_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(f"an orchestrator (pid {holder}) is already running on {config_dir}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class Supervisor:
    """Owns the child processes of one instance."""

    def __init__(self, runtime: Runtime, actors: list[str], routers: int = 1, attach_ui: bool = False,
                 name_suffix: str = "") -> None:
        self.runtime = runtime
        self.children: list[Child] = []
        self.stopping = False
        self.started_at = time.time()
        self.ready_after_s: float | None = None
        self.activity: deque[dict[str, Any]] = deque(maxlen=ACTIVITY_HISTORY)
        self.last_bus_heartbeat = 0.0
        self.attach_ui = attach_ui
        self.name_suffix = name_suffix  # satellites: keeps names unique on the shared bus
        self.remote: dict[str, RemoteActor] = {}
        self.last_beats = LastBeats()
        self.peripherals = PeripheralManager(runtime)  # the robot's own programs, from <config>/peripherals.toml
        self.control_handlers = {  # launch.py status/stop/scale/peripheral and the UI, on the control socket
            Op.CONTROL_STATUS.value: Handler(lambda request: self.status()),
            Op.CONTROL_STOP.value: Handler(self._stop_requested),
            Op.CONTROL_ACTIVITY.value: Handler(lambda request: {"activity": list(self.activity)}),
            Op.CONTROL_BEATS.value: Handler(lambda request: {"beats": self.last_beats.live(time.time())}),
            Op.CONTROL_SCALE.value: Handler(self._scale_requested),
            Op.CONTROL_PERIPHERAL.value: Handler(
                lambda request: self.peripherals.control(request.args, request.req_id)),
        }
        for kind in actors:
            if kind == "router":
                for index in range(1, routers + 1):
                    self.children.append(Child(name=f"router-{index}{name_suffix}", kind="router"))
            else:
                self.children.append(Child(name=f"{kind}{name_suffix}", kind=kind))
        if attach_ui:
            self.children.append(Child(name="ui", kind="ui", attached=True))

    # ---- processes ---------------------------------------------------------------------
    def _spawn(self, child: Child) -> None:
        module = ACTOR_MODULES[child.kind]
        cmd = [sys.executable, "-m", module, "--runtime", self.runtime.to_json(), "--parent-pid", str(os.getpid()),
               "--name", child.name]
        stderr_path = self.runtime.log_dir / f"{child.name}.stderr"
        stderr = None if self.runtime.console_log and not child.attached else open(stderr_path, "ab")
        child.process = subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=not child.attached,
                                         stdin=None if child.attached else subprocess.DEVNULL, stderr=stderr)
        if stderr is not None:
            stderr.close()
        child.started_at = time.time()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _reap(self, child: Child, now: float) -> None:
        """A child exited: schedule its restart with backoff, or give up when it flaps."""
        code = child.process.returncode if child.process else None
        if child.attached:
            self.children.remove(child)
            signal.signal(signal.SIGINT, self._on_signal)
            logging.getLogger().addHandler(console_handler("supervisor"))  # the terminal is ours again
            log.info("ui detached (exit %s); the orchestrator keeps running here: Ctrl+C stops it", code)
            return
        ran_for = now - child.started_at
        if ran_for >= STABLE_AFTER_S:
            child.crash_times.clear()
        child.crash_times = [t for t in child.crash_times if now - t < FLAP_WINDOW_S] + [now]
        child.process = None
        flapping = len(child.crash_times) >= FLAP_LIMIT
        if flapping and self._may_give_up(child):
            child.failed = True
            log.error("%s crashed %d times within %.0fs; left stopped (see logs/%s.log)", child.name,
                      len(child.crash_times), FLAP_WINDOW_S, child.name)
            return
        if len(child.crash_times) == FLAP_LIMIT:
            log.error("%s crashed %d times within %.0fs; the system cannot work without it, "
                      "so it is restarted every %.0fs at most (see logs/%s.log)",
                      child.name, FLAP_LIMIT, FLAP_WINDOW_S, BACKOFF_MAX_S, child.name)
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(len(child.crash_times) - 1, MAX_BACKOFF_DOUBLINGS))
        child.next_start = time.monotonic() + delay
        log.warning("%s exited with code %s after %.1fs; restarting in %.1fs", child.name, code, ran_for, delay)

    def _may_give_up(self, child: Child) -> bool:
        """Only actors the system can do without may be left stopped: no essential one, nor the last live router."""
        if child.kind in ESSENTIAL_KINDS:
            return False
        if child.kind == "router":
            return any(c is not child and c.kind == "router" and not c.failed for c in self.children)
        return True

    def _check_children(self) -> None:
        now = time.time()
        mono = time.monotonic()
        for child in list(self.children):
            if child.failed:
                continue
            if child.process is not None and child.process.poll() is not None:
                self._reap(child, now)
            elif child.process is None and mono >= child.next_start:
                child.restarts += 1
                self._spawn(child)
            elif child.alive and self._hung(child, now):
                log.error("%s sent no heartbeat for %.0fs; killing it", child.name, HANG_TIMEOUT_S)
                child.process.kill()

    def _hung(self, child: Child, now: float) -> bool:
        """Silent while the bus carries others' heartbeats (so it is the child, not the broker)."""
        if child.attached or now - self.last_bus_heartbeat > HEARTBEAT_EXPIRY_S:
            return False
        last = child.last_heartbeat if child.last_heartbeat and child.last_heartbeat >= child.started_at else None
        if last is None:
            return now - child.started_at > STARTUP_GRACE_S
        return now - last > HANG_TIMEOUT_S

    def stop_all(self) -> None:
        """SIGTERM everyone (newest layers first), wait STOP_GRACE_S, then SIGKILL what is left."""
        for child in reversed(self.children):
            if child.alive and not child.attached:
                child.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, STOP_GRACE_S)
                child.process.kill()
                child.process.wait(timeout=STOP_GRACE_S)

    # ---- control ---------------------------------------------------------------------
    def health(self, now: float) -> tuple[str, list[str]]:
        """("ready" | "degraded" | "starting", reasons): ready once all actors are up and the gateway has its ports."""
        reasons = [p for c in self.children if not c.attached and (p := c.problem(now)) is not None]
        reasons += self._gateway_problems(now)
        reasons += self.peripherals.health_problems()
        if self.ready_after_s is None:
            return "starting", reasons
        return ("degraded" if reasons else "ready"), reasons

    def _gateway_problems(self, now: float) -> list[str]:
        """Ports a live gateway reports it cannot bind (another process holds them); it keeps retrying."""
        problems: list[str] = []
        for child in self.children:
            if child.kind != "gateway" or not child.ready or now - (child.last_heartbeat or 0.0) > child.expiry_s:
                continue
            failed = child.heartbeat.get("stats", {}).get("failed_binds")
            if isinstance(failed, dict):
                problems += [f"port {port} {why}" for port, why in sorted(failed.items())]
        return problems

    def status(self) -> dict[str, Any]:
        now = time.time()
        health, reasons = self.health(now)
        return {"pid": os.getpid(), "config_dir": str(self.runtime.config_dir),
                "uptime_s": round(now - self.started_at, 1), "ready": self.ready_after_s is not None,
                "ready_after_s": self.ready_after_s, "health": health, "reasons": reasons,
                "children": [c.describe(now) for c in self.children],
                "remote": [r.describe(now) for r in sorted(self.remote.values(), key=lambda r: r.name)],
                "peripherals": self.peripherals.describe(), "launch_problems": list(self.peripherals.problems)}

    def scale_routers(self, count: int) -> dict[str, Any]:
        """Add or remove routers on the running system (the gateway drains a source before moving it)."""
        if not 1 <= count <= MAX_ROUTERS:
            raise BadArguments(f"routers must be between 1 and {MAX_ROUTERS}")
        routers = [c for c in self.children if c.kind == "router"]
        for index in range(len(routers) + 1, count + 1):
            child = Child(name=f"router-{index}{self.name_suffix}", kind="router")
            self.children.append(child)
            self._spawn(child)
        for child in routers[count:]:
            self.children.remove(child)
            if child.alive:
                child.process.terminate()
                child.process.wait(timeout=STOP_GRACE_S)
        log.info("routers scaled to %d", count)
        return {"routers": count}

    def handle_control(self, request: Request) -> Reply:
        return serve(request, self.control_handlers, kind="control op")[0]

    def _stop_requested(self, _: Request) -> dict[str, Any]:
        self.stopping = True
        return {"stopping": True}

    def _scale_requested(self, request: Request) -> dict[str, Any]:
        count = request.args.get("routers")
        if not isinstance(count, int):
            raise BadArguments("scale needs an integer 'routers'")
        return self.scale_routers(count)

    def _on_control(self, sock: zmq.Socket) -> None:
        frames = sock.recv_multipart()
        try:
            reply = self.handle_control(decode_as(frames[-1], Request))
        except ProtocolError as exc:
            reply = Reply(ok=False, error=str(exc), code=ErrorCode.BAD_ARGUMENTS)
        sock.send_multipart(frames[:-1] + [encode(reply)])

    def _on_event(self, frames: list[bytes]) -> None:
        """Heartbeats (liveness, readiness) and activity lines (kept for UIs that attach later)."""
        try:
            _, message = parse_event(frames)
        except ProtocolError:
            return
        if isinstance(message, Activity):
            self.activity.append({"ts": message.ts, "actor": message.actor, "level": message.level,
                                  "text": message.text})
        elif isinstance(message, Heartbeat):
            self.last_beats.note(message, frames[1], time.time())
            self._on_heartbeat(message)

    def _on_heartbeat(self, message: Heartbeat) -> None:
        now = time.time()
        self.last_bus_heartbeat = now
        own = False
        for child in self.children:
            if child.name == message.actor:
                own = True
                if child.pid == message.pid:
                    child.last_heartbeat = now
                    child.heartbeat = {"host": message.host, "stats": message.stats}
                    child.expiry_s = beat_expiry(message)
        if not own and message.actor != f"supervisor{self.name_suffix}":
            self._heard_remote(message, now)
        if self.ready_after_s is None and all(c.last_heartbeat for c in self.children
                                              if not c.failed and not c.attached):
            self.ready_after_s = round(now - self.started_at, 3)
            log.info("orchestrator ready in %.0f ms (%d processes)", self.ready_after_s * 1000, len(self.children))

    def _heard_remote(self, beat: Heartbeat, now: float) -> None:
        """Keep the table of other supervisors' actors, logging when one joins or comes back."""
        known = self.remote.get(beat.actor)
        if known is None or not known.live(now) or known.pid != beat.pid:
            log.info("%s on %s joined (pid %d)", beat.actor, beat.host, beat.pid)
        self.remote[beat.actor] = RemoteActor(beat.actor, beat.host, beat.pid, now, beat.stats,
                                              expiry_s=beat_expiry(beat))

    def _expire_remote(self) -> None:
        """Report remote actors that fell silent (their board is gone or cut off); forget them later."""
        now = time.time()
        for actor in list(self.remote.values()):
            silent = now - actor.last_heartbeat
            if silent > REMOTE_FORGET_S:
                del self.remote[actor.name]
            elif not actor.live(now) and not actor.reported_lost:
                actor.reported_lost = True
                log.warning("%s on %s lost: no heartbeat for %.0fs", actor.name, actor.host, silent)

    def _sleep_s(self, heart: Heartbeater) -> float:
        """Until the next timed job: a beat, a restart, a hang, a remote actor's expiry or a peripheral's deadline. A
        child's exit (a peripheral's too: SIGCHLD), a stop signal, an event, a state update or a control request wake
        us earlier."""
        now, mono = time.time(), time.monotonic()
        due = [heart.due_in()]
        for child in self.children:
            if child.process is None and not child.failed:
                due.append(child.next_start - mono)
            elif child.alive and not child.attached:
                beat_since_start = child.last_heartbeat and child.last_heartbeat >= child.started_at
                last = child.last_heartbeat if beat_since_start else None
                due.append((child.started_at + STARTUP_GRACE_S if last is None else last + HANG_TIMEOUT_S) - now)
        due += [actor.last_heartbeat + actor.expiry_s - now
                for actor in self.remote.values() if not actor.reported_lost]
        if not self._peripherals_may_start():
            due.append(self.started_at + STARTUP_GRACE_S - now)
        elif (peripherals := self.peripherals.next_due(mono)) is not None:  # restarts, stop and start deadlines
            due.append(peripherals)
        return max(0.0, min(due))

    def _peripherals_may_start(self) -> bool:
        """The robot's programs start once the orchestrator can take their registrations (or the grace is over)."""
        return self.ready_after_s is not None or time.time() - self.started_at > STARTUP_GRACE_S

    def _beat_stats(self) -> dict[str, Any]:
        """Heartbeat stats: counts, and the health with its reasons (the UI's status line shows them)."""
        health, reasons = self.health(time.time())
        return {"children": len(self.children), "failed": sum(c.failed for c in self.children),
                "restarts": sum(c.restarts for c in self.children), "health": health, "reasons": reasons,
                **({"peripherals": self.peripherals.beat()} if self.peripherals.entries else {})}

    def _on_signal(self, *_: object) -> None:
        self.stopping = True

    # ---- main loop -------------------------------------------------------------------
    def run(self) -> int:
        """Start everything, then supervise until asked to stop; returns the exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.attach_ui else self._on_signal)
        context = zmq.Context()
        endpoints = self.runtime.endpoints
        auth = start_authenticator(context, [endpoints.control], endpoints.keys_dir)
        control = context.socket(zmq.ROUTER)
        control.setsockopt(zmq.LINGER, 0)
        secure_server(control, endpoints.control, endpoints.keys_dir)
        control.bind(endpoints.control)
        events = connect_subscriber(context, endpoints, [*LIVENESS_TOPICS, Topic.ACTIVITY])
        presence = BusPresence(context, endpoints, "supervisor", beat_as=f"supervisor{self.name_suffix}", logger=log)
        heart = presence.heart
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(events, zmq.POLLIN)
        wakeup = self._wake_on_signals()
        poller.register(wakeup, zmq.POLLIN)
        launch_file_watch = self.peripherals.file_watch.fileno()
        if launch_file_watch is not None:
            poller.register(launch_file_watch, zmq.POLLIN)
        log.info("supervisor %d starting %s on %s", os.getpid(), ", ".join(c.name for c in self.children),
                 self.runtime.config_dir)
        try:
            for child in self.children:
                self._spawn(child)
            self.peripherals.open(context)
            while not self.stopping:
                ready = dict(poller.poll(self._sleep_s(heart) * 1000 + 1))
                if wakeup in ready:
                    drain(wakeup)
                if launch_file_watch in ready:
                    self.peripherals.file_event()
                if control in ready:
                    self._on_control(control)
                while events in ready and events.poll(0):
                    self._on_event(events.recv_multipart())
                self._check_children()
                self._expire_remote()
                if self._peripherals_may_start():
                    self.peripherals.tick()  # peripherals start once the orchestrator can take their registrations
                    self._watch(poller, self.peripherals.sockets)  # from now on tick() reads them each pass
                heart.maybe_beat(self._beat_stats())  # a changed health leaves within HEARTBEAT_INTERVAL_S
        finally:
            self.peripherals.close()
            log.info("stopping %d processes", sum(c.alive for c in self.children))
            self.stop_all()
            presence.close(linger_ms=0)
            for sock in (control, events):
                sock.close(linger=0)
            if auth is not None:
                auth.stop()
            context.term()
            os.close(signal.set_wakeup_fd(-1))
            os.close(wakeup)
            log.info("stopped")
        return 0

    @staticmethod
    def _watch(poller: zmq.Poller, sockets: tuple[zmq.Socket, ...]) -> None:
        """Sockets whose traffic wakes the loop (the peripherals' follower: a registration is handled at once)."""
        for sock in sockets:
            if sock not in poller:
                poller.register(sock, zmq.POLLIN)

    def _wake_on_signals(self) -> int:
        """A pipe the interpreter writes to on each signal: a child's exit (SIGCHLD) or a stop wakes the loop now."""
        read_end, write_end = os.pipe()
        for end in (read_end, write_end):
            os.set_blocking(end, False)
        signal.set_wakeup_fd(write_end)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so the wake-up fd is written
        return read_end


def drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe."""
    try:
        while os.read(fd, WAKEUP_READ_BYTES):
            pass
    except BlockingIOError:
        pass
