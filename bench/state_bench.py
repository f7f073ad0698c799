"""The state keeper under a registration flood, and the cost of writing orch.cf.

    python -m bench.state_bench [--flood 3000] [--threads 8]

1. File writing, in process: one save of orch.cf with N peripherals, each holding a config at the
   depth limit (and one legacy config 600 deep), with the old writer (indent=4 everywhere) and the
   current one (pretty only at the top levels): milliseconds per save and bytes on disk.
2. A registration flood against a real instance (broker, state keeper, gateway on ephemeral ports):
   `--flood` registrations from 127.0.0.2 (outside admin_clients, so max_peripherals_per_host
   applies), then as many from 127.0.0.1 (an admin: no quota, for comparison). Per window of
   registrations: rate, p50/p99 latency, state-keeper writes and milliseconds spent writing.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


from actors.state.store import ConfigStore, readable_json
from actors.core.settings import TUNABLE_DEFAULTS, default_config
from tests.support.instances import Instance, start_instance, wait_until
from tests.support.records import deep, uid

WINDOWS = 6
SAVE_REPEATS = 5
LEGACY_DEPTH = 600
PERIPHERAL_COUNTS = (100, 1000, 4000)
CONNECT_TIMEOUT_S = 5.0
STATS_WAIT_S = 3.0  # the state keeper heartbeats once a second


def document(count: int, legacy: bool) -> dict[str, Any]:
    config = default_config()
    depth = int(TUNABLE_DEFAULTS["max_peripheral_config_depth"])
    config["peripherals"] = [{"name": f"P{n}", "uuid": uid(n), "config": deep(depth), "port": 6200 + n % 100, "last_seen": 1.0,
                              "data_port": 6001 + n % 99, "online": True, "host": "127.0.0.2", "delivery": "message"}
                             for n in range(count)]
    if legacy:
        config["peripherals"][0]["config"] = {"a": json.loads("[" * LEGACY_DEPTH + "]" * LEGACY_DEPTH)}
    return config


def time_save(folder: Path, data: dict[str, Any], old_writer: bool) -> tuple[float, int]:
    """Median ms of one save, and the bytes of orch.cf."""
    store = ConfigStore(folder)
    folder.mkdir(parents=True, exist_ok=True)
    timings = []
    for _ in range(SAVE_REPEATS):
        began = time.perf_counter()
        if old_writer:
            text = json.dumps(data, indent=4, ensure_ascii=False) + "\n"
            store.config_path.write_text(text)
        else:
            store.save(data, [])
        timings.append((time.perf_counter() - began) * 1000)
    return statistics.median(timings), store.config_path.stat().st_size


def bench_files() -> None:
    print("orch.cf save (median of 5): peripherals, legacy deep config, old writer ms/bytes, new writer ms/bytes")
    with tempfile.TemporaryDirectory(prefix="orch-state-bench-") as tmp:
        for count in PERIPHERAL_COUNTS:
            for legacy in (False, True):
                data = document(count, legacy)
                old_ms, old_bytes = time_save(Path(tmp) / f"old-{count}-{legacy}", data, True)
                new_ms, new_bytes = time_save(Path(tmp) / f"new-{count}-{legacy}", data, False)
                assert json.loads((Path(tmp) / f"new-{count}-{legacy}" / "orch.cf").read_text()) == data
                print(f"  {count:5d}  {'yes' if legacy else 'no ':3s}  old {old_ms:8.1f} ms {old_bytes / 1e6:7.2f} MB"
                      f"   new {new_ms:8.1f} ms {new_bytes / 1e6:7.2f} MB")
    assert readable_json({}) == "{}"


def register(port: int, source: str, n: int) -> tuple[float, bool]:
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S, source_address=(source, 0)) as sock:
        sock.sendall(f"/register Flood {uid(n)} {7000 + n % 1000}\n".encode())
        reply = sock.recv(1024)
    return time.perf_counter() - began, reply.startswith(b"/ack ")


def state_stats(instance: Instance) -> dict[str, Any]:
    return next(c for c in instance.status()["children"] if c["name"] == "state")["stats"]


def stats_after(instance: Instance, requests: int) -> dict[str, Any]:
    """The state keeper's figures once its heartbeat counts `requests` requests."""
    def current() -> dict[str, Any] | None:
        stats = state_stats(instance)
        return stats if stats.get("requests", 0) >= requests else None
    return wait_until(current, STATS_WAIT_S + 5, message="the state keeper's heartbeat")


def flood(instance: Instance, source: str, first: int, total: int, threads: int) -> None:
    window = total // WINDOWS
    print(f"flood from {source}: window, registrations/s, p50 ms, p99 ms, accepted, state writes, ms writing, peripherals, orch.cf KB")
    with ThreadPoolExecutor(threads) as pool:
        for index in range(WINDOWS):
            before = state_stats(instance)
            began = time.perf_counter()
            numbers = range(first + index * window, first + (index + 1) * window)
            results = list(pool.map(lambda n: register(instance.command_port, source, n), numbers))
            elapsed = time.perf_counter() - began
            after = stats_after(instance, before.get("requests", 0) + window)
            latencies = sorted(latency * 1000 for latency, _ in results)
            size_kb = (instance.config_dir / "orch.cf").stat().st_size / 1024
            print(f"  {index + 1}  {window / elapsed:7.0f}  {statistics.median(latencies):6.1f}  {latencies[int(len(latencies) * 0.99) - 1]:6.1f}"
                  f"  {sum(ok for _, ok in results):5d}  {after['writes'] - before['writes']:5d}"
                  f"  {(after['write_seconds'] - before['write_seconds']) * 1000:8.1f}  {after['peripherals']:5d}  {size_kb:8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    bench_files()
    folder = Path(tempfile.mkdtemp(prefix="orch-state-bench-"))
    instance = start_instance(folder, only=["broker", "state", "gateway"], config={"admin_clients": ["127.0.0.1/32"]})
    try:
        flood(instance, "127.0.0.2", 0, args.flood, args.threads)
        flood(instance, "127.0.0.1", args.flood, args.flood, args.threads)
    finally:
        instance.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
