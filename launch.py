"""Start, inspect and stop an orchestrator instance.

    python launch.py [--config-dir DIR] [--headless] [--routers N]   run (UI attached on a terminal)
    python launch.py status [--json]                                 is it alive, and how
    python launch.py ctl '/routes info'                              send any command, print the reply
    python launch.py scale N                                         set the number of routers
    python launch.py ui                                              attach a UI to a running instance
    python launch.py stop                                            stop a running instance
    python launch.py peripheral start|stop|restart|list [<name>]     the robot's peripherals (peripherals.toml)
    python launch.py logs <name> [-f] [-n N]                         a peripheral's output
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import zmq

from actors.supervisor.cli import EXIT_UNREACHABLE
from actors.state.store import preflight
from actors.core.errors import OrchestratorError
from actors.supervisor.peripheralcli import (DEFAULT_TAIL_LINES, PERIPHERAL_ACTIONS, print_peripherals,
                                             run_peripheral_command, show_logs)
from actors.core.protocol import Op
from actors.core.runfolder import UnsafeRunDir, check_run_dir, claim_run_dir, ensure_runtime_dirs, release_run_dir
from actors.core.runner import setup_logging
from actors.core.security import ensure_keys, missing_client_keys, needs_curve
from actors.core.settings import DEFAULT_CONFIG_DIR, Endpoints, Runtime
from actors.supervisor.supervisor import (ACTOR_MODULES, DEFAULT_ACTORS, DEFAULT_ROUTERS, AlreadyRunning, Supervisor,
                                          acquire_lock)

CONTROL_TIMEOUT_S = 3.0
EXIT_BAD_CONFIG = 2
# the actors that read orch.cf: the launch checks it first when one of them runs here
CONFIG_ACTORS = ("state", "gateway")


def add_common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Options every subcommand takes too (`launch.py status --config-dir X`); a subcommand overrides what it got."""
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--config-dir", default=default(DEFAULT_CONFIG_DIR),
                        help="folder of orch.cf, routes.cf, logs (default: config)")
    parser.add_argument("--log-level", default=default("INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--bus", default=default(None), metavar="tcp://HOST:PORT",
                        help="serve the bus on six tcp ports from PORT on HOST (an address of this machine) "
                             "so other boards can --join; CurveZMQ keys are required on tcp")
    parser.add_argument("--join", default=default(None), metavar="tcp://HOST:PORT",
                        help="run a satellite: only the --only actors (default: router), "
                             "connected to the main instance's --bus")
    parser.add_argument("--satellite-name", default=default(socket.gethostname()),
                        help="suffix that keeps a satellite's actor names unique (default: host name)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser, defaults=True)
    parser.add_argument("--headless", action="store_true", help="no terminal UI; logs to the console")
    parser.add_argument("--routers", type=int, default=DEFAULT_ROUTERS,
                        help=f"number of data routers (default {DEFAULT_ROUTERS}: on 2 cores one router beat two, "
                             "see README 'Performance')")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated actors to run (default: {','.join(DEFAULT_ACTORS)})")
    parser.set_defaults(func=run)
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command")

    def command(name: str, func: Callable[[argparse.Namespace, Runtime], int], help: str) -> argparse.ArgumentParser:
        found = sub.add_parser(name, help=help, parents=[common])
        found.set_defaults(func=lambda args: run_command(args, func))
        return found

    status = command("status", cmd_status, "show whether the instance is alive, and its processes")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    ctl = command("ctl", cmd_ctl, "send one command line (as on the command port) and print the reply")
    ctl.add_argument("line", nargs="+", help="the command, e.g. '/routes info'")
    scale = command("scale", cmd_scale, "set the number of routers of a running instance")
    scale.add_argument("routers", type=int)
    command("ui", cmd_ui, "attach a terminal UI to a running instance")
    command("stop", cmd_stop, "stop a running instance")
    peripheral = command("peripheral", cmd_peripheral,
                         "start, stop, restart or list the peripherals of peripherals.toml")
    peripheral.add_argument("action", choices=PERIPHERAL_ACTIONS)
    peripheral.add_argument("name", nargs="?", default=None,
                            help="one peripheral (its key in peripherals.toml); default: all")
    logs = sub.add_parser("logs", help="show a peripheral's output (logs/peripherals/<name>.log)", parents=[common])
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing what it writes")
    logs.add_argument("-n", "--lines", type=int, default=DEFAULT_TAIL_LINES,
                      help=f"last lines to show (default {DEFAULT_TAIL_LINES})")
    # files only: up or not
    logs.set_defaults(func=lambda args: show_logs(runtime_for(args), args.name, args.follow, args.lines))
    return parser


def parse_bus_address(address: str) -> tuple[str, int]:
    """tcp://HOST:PORT -> (HOST, PORT); raises ValueError with a readable message."""
    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        raise ValueError(f"bus address must look like tcp://HOST:PORT, got {address!r}")
    return parts.hostname, parts.port


def runtime_for(args: argparse.Namespace, console_log: bool = True) -> Runtime:
    """The runtime of this invocation: local ipc bus, or tcp for --bus / --join."""
    local = Runtime.for_config_dir(args.config_dir, log_level=args.log_level, console_log=console_log)
    address = args.bus or args.join
    if not address:
        return local
    host, port = parse_bus_address(address)
    endpoints = Endpoints.tcp(host, port, local.endpoints.keys_dir)
    if args.join:
        # a satellite's own control stays local
        endpoints = dataclasses.replace(endpoints, control=local.endpoints.control)
    return dataclasses.replace(local, endpoints=endpoints)


def refuse_bad_config(runtime: Runtime) -> bool:
    """Check orch.cf before any actor starts: an unreadable security key stops it with one message (no restart loop)."""
    problem = preflight(runtime.config_dir)
    if problem is None:
        return False
    logging.getLogger("supervisor").error("not starting: %s", problem)
    if not runtime.console_log:  # the console handler has shown it already
        print(f"not starting: {problem}", file=sys.stderr)
    return True


def run(args: argparse.Namespace) -> int:
    """Run an instance in the foreground until Ctrl+C, SIGTERM or `launch.py stop`."""
    attach_ui = not args.headless and not args.join and sys.stdin.isatty() and sys.stdout.isatty()
    try:
        runtime = runtime_for(args, console_log=not attach_ui)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    actors = args.only.split(",") if args.only else (["router"] if args.join else list(DEFAULT_ACTORS))
    unknown = [a for a in actors if a not in ACTOR_MODULES]
    if unknown:
        print(f"unknown actor(s): {', '.join(unknown)}; known: {', '.join(ACTOR_MODULES)}", file=sys.stderr)
        return 2
    try:
        lock = acquire_lock(runtime.config_dir)
    except AlreadyRunning as exc:
        print(f"{exc}. Use 'python launch.py --config-dir {args.config_dir} status' or 'stop'.", file=sys.stderr)
        return 2
    try:
        runtime = with_run_dir(runtime, claim_run_dir(runtime.config_dir))
        ensure_runtime_dirs(runtime)
    except UnsafeRunDir as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        lock.close()
        return 2
    setup_logging(runtime, "supervisor", replace_handlers=False)
    if any(actor in CONFIG_ACTORS for actor in actors) and refuse_bad_config(runtime):
        lock.close()
        return EXIT_BAD_CONFIG
    if args.bus and needs_curve(runtime.endpoints.events_in):
        ensure_keys(Path(runtime.endpoints.keys_dir))
    keys_dir = Path(runtime.endpoints.keys_dir)
    missing = missing_client_keys(keys_dir) if args.join and needs_curve(runtime.endpoints.events_in) else []
    if missing:
        print(f"--join {args.join} needs the main board's keys: {', '.join(missing)} "
              f"missing in {runtime.endpoints.keys_dir}. "
              f"Copy server.key, client.key and client.key_secret from the main board's <config>/keys "
              f"(README 'Several boards').", file=sys.stderr)
        lock.close()
        return 2
    try:
        suffix = f"@{args.satellite_name}" if args.join else ""
        return Supervisor(runtime, actors, routers=args.routers, attach_ui=attach_ui, name_suffix=suffix).run()
    finally:
        release_run_dir(runtime.config_dir, runtime.run_dir)
        lock.close()


def with_run_dir(runtime: Runtime, run_dir: Path) -> Runtime:
    """The runtime with the run folder the supervisor claimed (ipc endpoints move with it; tcp ones stay)."""
    if run_dir == runtime.run_dir:
        return runtime
    local = Endpoints.local(runtime.run_dir, runtime.endpoints.keys_dir)
    moved = Endpoints.local(run_dir, runtime.endpoints.keys_dir)
    endpoints = Endpoints(**{key: getattr(moved, key) if value == getattr(local, key) else value
                             for key, value in dataclasses.asdict(runtime.endpoints).items()})
    return dataclasses.replace(runtime, run_dir=run_dir, endpoints=endpoints)


def control_request(runtime: Runtime, op: Op, **request_args: Any) -> Any:
    """Ask the running supervisor; raises Unavailable when nobody answers."""
    from actors.core.requests import RequestClient  # here, not at the top: keeps asyncio out of the supervisor's memory

    context = zmq.Context()
    client = RequestClient(context, runtime.endpoints.control, runtime.endpoints.keys_dir)
    try:
        return client.request(op, timeout=CONTROL_TIMEOUT_S, **request_args)
    finally:
        client.close()
        context.term()


def health_text(status: dict[str, Any]) -> str:
    """"ready", "starting" or "degraded: <reason>; <reason>" from the supervisor's status."""
    health = status.get("health") or ("ready" if status.get("ready") else "starting")
    reasons = status.get("reasons") or []
    return f"{health}: {'; '.join(reasons)}" if health == "degraded" and reasons else health


def print_status(status: dict[str, Any]) -> None:
    ready = f" (ready after {status['ready_after_s'] * 1000:.0f} ms)" if status["ready_after_s"] else ""
    print(f"orchestrator pid {status['pid']} on {status['config_dir']}, up {status['uptime_s']:.0f}s, "
          f"{health_text(status)}{ready}")
    for child in status["children"]:
        age = "-" if child["heartbeat_age_s"] is None else f"{child['heartbeat_age_s']:.1f}s"
        pid = str(child["pid"] or "-")
        print(f"  {child['name']:<10} {child['state']:<8} pid {pid:<8} restarts {child['restarts']:<3} heartbeat {age}")
    for actor in status.get("remote", []):
        print(f"  {actor['name']:<10} {actor['state']:<8} pid {actor['pid']:<8} on {actor['host']} "
              f"(another board's supervisor), heartbeat {actor['heartbeat_age_s']:.1f}s")


def config_notices(status: dict[str, Any]) -> list[str]:
    """Loud configuration states reported by the actors (e.g. ports on loopback only after an unreadable orch.cf)."""
    return [child["stats"]["config_notice"] for child in status.get("children", [])
            if isinstance(child.get("stats"), dict) and child["stats"].get("config_notice")]


def show_status(runtime: Runtime, as_json: bool, satellite: bool = False) -> int:
    """The supervisor's process table plus the gateway's /status figures (when the gateway answers)."""
    from actors.supervisor.cli import Unreachable, fetch_status, format_status
    processes = control_request(runtime, Op.CONTROL_STATUS)
    figures: dict[str, Any] | None = None
    reason = "a satellite board (--join) has no gateway: see the main board's status"
    try:
        if not satellite:
            figures = fetch_status(runtime, CONTROL_TIMEOUT_S)
    except Unreachable as exc:
        reason = str(exc)
    if as_json:
        print(json.dumps({"supervisor": processes, "orchestrator": figures}, indent=2))
        return 0
    print_status(processes)
    print_peripherals(processes)
    for notice in config_notices(processes):
        print(f"  WARNING: {notice}")
    print(format_status(figures) if figures else f"  (no figures: {reason})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def run_command(args: argparse.Namespace, func: Callable[[argparse.Namespace, Runtime], int]) -> int:
    """A subcommand that talks to a running instance: through its own run folder, or the --bus/--join bus."""
    runtime = runtime_for(args)
    try:
        check_local_run_dir(runtime)
        return func(args, runtime)
    except (OrchestratorError, UnsafeRunDir) as exc:
        print(f"orchestrator on {runtime.config_dir} is not reachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE


def cmd_status(args: argparse.Namespace, runtime: Runtime) -> int:
    return show_status(runtime, args.json, satellite=bool(args.join))


def cmd_stop(args: argparse.Namespace, runtime: Runtime) -> int:
    control_request(runtime, Op.CONTROL_STOP)
    print("stopping")
    return 0


def cmd_scale(args: argparse.Namespace, runtime: Runtime) -> int:
    print(control_request(runtime, Op.CONTROL_SCALE, routers=args.routers))
    return 0


def cmd_ctl(args: argparse.Namespace, runtime: Runtime) -> int:
    from actors.supervisor.cli import run_ctl
    return run_ctl(runtime, " ".join(args.line))


def cmd_peripheral(args: argparse.Namespace, runtime: Runtime) -> int:
    return run_peripheral_command(lambda **request: control_request(runtime, Op.CONTROL_PERIPHERAL, **request),
                                  args.action, args.name)


def cmd_ui(args: argparse.Namespace, runtime: Runtime) -> int:
    from actors.ui.app import attach
    return attach(runtime)


def check_local_run_dir(runtime: Runtime) -> None:
    """Before talking over ipc: the run folder must be ours and 0700, or its sockets may be someone else's."""
    endpoints = dataclasses.asdict(runtime.endpoints).values()
    if any(endpoint.startswith("ipc://") for endpoint in endpoints if isinstance(endpoint, str)):
        check_run_dir(runtime.run_dir)


if __name__ == "__main__":
    raise SystemExit(main())
