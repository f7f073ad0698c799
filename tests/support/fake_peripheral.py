"""A peripheral program for the bring-up tests and benchmark, speaking only the legacy protocol.

It serves /info on an ephemeral port of its own, registers on the command port found in the
orch.cf of its working folder (the config folder, the launch file's default cwd), and then, as told:
echoes stdin lines to stdout, crashes after some seconds, ignores SIGTERM, forks a child that
stays in its process group, or writes a burst of output (log rotation).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid as uuidlib

REGISTER_TIMEOUT_S = 10.0
RETRY_S = 0.05


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="Fake_Engine")
    parser.add_argument("--uuid", default=None, help="fixed uuid (default: a new one each start)")
    parser.add_argument("--no-register", action="store_true", help="run but never register")
    parser.add_argument("--register-delay", type=float, default=0.0, help="seconds before registering")
    parser.add_argument("--crash-after", type=float, default=None, help="exit with code 3 after this many seconds")
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--ignore-term", action="store_true", help="SIGTERM does nothing")
    parser.add_argument("--fork-child", action="store_true",
                        help="fork a child (it ignores SIGTERM) that stays in the group")
    parser.add_argument("--echo-stdin", action="store_true", help="print 'got: <line>' for every stdin line")
    parser.add_argument("--spew", type=int, default=0, help="print this many bytes of lines at start")
    parser.add_argument("--pid-file", default=None, help="append 'role pid' lines here")
    return parser.parse_args()


def note_pid(path: str | None, role: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{role} {os.getpid()} {time.time():.6f}\n")


def serve_info(name: str, uuid: str) -> int:
    """Our own port: /info answers name, uuid, EOF."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def loop() -> None:
        while True:
            conn, _ = listener.accept()
            with conn:
                data = conn.recv(4096)
                if data.startswith(b"/info"):
                    conn.sendall(f"{name}\n{uuid}\nEOF\n".encode())

    threading.Thread(target=loop, daemon=True).start()
    return listener.getsockname()[1]


def register(name: str, uuid: str, port: int) -> str:
    """/register on the command port of orch.cf in our working folder; retried until the gateway listens."""
    command_port = json.load(open("orch.cf", encoding="utf-8"))["command_port"]
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", command_port), timeout=2.0) as sock:
                sock.sendall(f"/register {name} {uuid} {port}\n".encode())
                return sock.recv(4096).decode().strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(RETRY_S)


def main() -> int:
    args = parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note_pid(args.pid_file, "leader")
    if args.fork_child and os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        note_pid(args.pid_file, "child")
        while True:
            time.sleep(1)
    if args.spew:
        line = "x" * 99 + "\n"
        sys.stdout.write(line * (args.spew // len(line) + 1))
        sys.stdout.flush()
    uuid = args.uuid or str(uuidlib.uuid4())
    port = serve_info(args.name, uuid)
    time.sleep(args.register_delay)
    if not args.no_register:
        print(f"registered {args.name} {uuid}: {register(args.name, uuid, port)}", flush=True)
    if args.crash_after is not None:
        time.sleep(args.crash_after)
        print("crashing", flush=True)
        return args.exit_code
    if args.echo_stdin:
        for line in sys.stdin:
            print(f"got: {line.rstrip()}", flush=True)
        return 0
    while True:
        time.sleep(1)


if __name__ == "__main__":
    raise SystemExit(main())
