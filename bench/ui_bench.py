"""Terminal UI benchmark: how fast a state change reaches the screen, and what the UI costs in CPU.

Not a test. It starts a full orchestrator (launch.py --headless, ephemeral ports, temporary folder)
and the real UI in a private tmux server (100x30), then measures:

* update latency: register a new peripheral through the state keeper and poll ``tmux capture-pane``
  until its name is on screen (includes the request round trip and tmux's own capture, ~2-5 ms);
* idle CPU: the UI process's user+system time (``/proc/<pid>/stat``) over --seconds with nothing happening;
* CPU under load: the same while --rate messages/s are routed (one source on a data port, one sink
  peripheral in the default one-connection-per-message mode), with the sink's count as a check.

Run: python -m bench.ui_bench [--samples 30] [--seconds 10] [--rate 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

from actors.core.protocol import Op
from tests.support.instances import start_instance, wait_until
from tests.support.fakes import LineSink

SCREEN_POLL_S = 0.002
SCREEN_TIMEOUT_S = 5.0
TMUX_TIMEOUT_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RESULTS_DIR = REPO_ROOT / "bench" / "results"
PACE_SLICE_S = 0.01


class Tmux:
    """A private tmux server running one command; always killed in close()."""

    def __init__(self, command: str, width: int = 100, height: int = 30) -> None:
        self.socket = f"orch-ui-bench-{uuidlib.uuid4().hex[:10]}"
        self.run("new-session", "-d", "-x", str(width), "-y", str(height), command)

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=TMUX_TIMEOUT_S).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p")

    def pane_pid(self) -> int:
        return int(self.run("display", "-p", "#{pane_pid}").strip())

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=TMUX_TIMEOUT_S)
        (Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / self.socket).unlink(missing_ok=True)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_percent(pid: int, seconds: float, during=None) -> float:
    """CPU use of pid over seconds, as a percentage of one core; ``during`` runs meanwhile (it must take ~seconds)."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    if during is None:
        time.sleep(seconds)
    else:
        during(seconds)
    return 100.0 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def measure_latency(instance, tmux: Tmux, samples: int) -> list[float]:
    """ms from 'register' sent to the name visible on screen, once per sample."""
    client = instance.state_client()
    results = []
    for i in range(samples):
        name = f"Bench_{i:03d}_{uuidlib.uuid4().hex[:4]}"
        started = time.perf_counter()
        client.request(Op.REGISTER, name=name, uuid=str(uuidlib.uuid4()), port=30000 + i)
        wait_until(lambda: name in tmux.screen(), SCREEN_TIMEOUT_S, SCREEN_POLL_S, f"{name} on screen")
        results.append((time.perf_counter() - started) * 1000)
        client.request(Op.REMOVE_PERIPHERAL, name=name)  # keep the list short, so the new name is always in view
        time.sleep(0.3)
    return results


def route_load(instance, sink: LineSink):
    """Return a callable that sends rate messages/s for the given seconds from a registered source."""
    source_uuid, sink_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    ack = instance.command(f"/register Bench_Source {source_uuid} 1")
    instance.command(f"/register Bench_Sink {sink_uuid} {sink.port}")
    instance.command("/routes add bench Bench_Source Bench_Sink")
    data_port = int(ack.split()[1])

    def send(seconds: float, rate: int) -> int:
        sent = 0
        with socket.create_connection(("127.0.0.1", data_port), timeout=5) as conn:
            conn.sendall(f"{source_uuid}\n".encode())
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < seconds:
                due = int(elapsed * rate) - sent
                if due > 0:
                    conn.sendall(b"".join(f"payload {sent + k}\n".encode() for k in range(due)))
                    sent += due
                time.sleep(PACE_SLICE_S)
        return sent
    return send


def render_cost_us(history: int, rounds: int = 500) -> float:
    """CPU microseconds for one overview frame (120 x 40) with `history` activity lines kept: what the clock's
    repaint once a second costs in rendering, before curses."""
    from actors.ui import viewmodel as vm
    now = time.monotonic()
    actors = {name: vm.ActorStatus(name, now, time.time() - 65, 1, {"delivered": 5, "last_scan": time.time() - 2})
              for name in ("supervisor", "broker", "state", "gateway", "router-1", "scanner")}
    activity = [vm.ActivityLine(time.time(), "gateway", "INFO", f"line {i}: something happened, with details")
                for i in range(history)]
    model = vm.Model(script_uuid=str(uuidlib.uuid4()), actors=actors, connected=True, ever_connected=True,
                     activity=activity)
    vm.overview(model, 120, 40)
    began = time.process_time()
    for _ in range(rounds):
        vm.overview(model, 120, 40)
    return (time.process_time() - began) / rounds * 1e6


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 1), "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
            "min": round(ordered[0], 1), "max": round(ordered[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("tmux is not installed", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    instance = start_instance(workdir)
    tmux = None
    sink = LineSink().start()
    try:
        command = f"cd {shlex.quote(str(REPO_ROOT))} && exec {shlex.quote(sys.executable)} -m actors.ui --runtime {shlex.quote(instance.runtime.to_json())} --name ui-bench"
        tmux = Tmux(command)
        wait_until(lambda: "actors" in tmux.screen(), SCREEN_TIMEOUT_S, 0.05, "the UI to connect")
        pid = tmux.pane_pid()
        latency = measure_latency(instance, tmux, args.samples)
        idle = cpu_percent(pid, args.seconds)
        send = route_load(instance, sink)
        sent: list[int] = []
        loaded = cpu_percent(pid, args.seconds, lambda s: sent.append(send(s, args.rate)))
        wait_until(lambda: sink.count() >= sent[0], 10.0, 0.1, "the sink to receive every message")
        screen = tmux.screen()
        results = {
            "update_latency_ms": summary(latency), "samples": args.samples,
            "idle_cpu_percent": round(idle, 2), "loaded_cpu_percent": round(loaded, 2),
            "render_us_per_frame": {f"{n} activity lines": round(render_cost_us(n), 1) for n in (40, 500, 2000)},
            "rate_msgs_per_s": args.rate, "messages_sent": sent[0], "messages_delivered": sink.count(), "seconds": args.seconds,
            "route_row_on_screen": next((line.strip() for line in screen.splitlines() if line.strip().startswith("bench ")), ""),
        }
    finally:
        if tmux is not None:
            tmux.close()
        sink.stop()
        instance.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "ui_bench.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
