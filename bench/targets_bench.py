"""The data path's latency targets: each figure of ours beside its physical reference, alternated, medians compared.

    python -m bench.targets_bench [--rounds 3] [--seconds 5] [--low-seconds 25]

4 sources -> 4 sinks (router_bench's helpers: sinks and sources in their own processes, 64-byte
payloads). Each round runs, in this order, the persistent relay (one asyncio process, one kept
connection per sink), our stream delivery (1 router), the per-message relay (a new connection per
payload, in order per sink) and our per-message delivery (2 routers); each of them:

  * unpaced, for throughput;
  * paced at --rate in total (1,000 msg/s: 5,000 samples in 5 s);
  * at a low rate, 10 msg/s per source (a speech pipeline; 1,000 samples in 25 s).

The medians over the rounds are then checked against the targets:

  stream p99 <= 2x and p50 <= 3x the persistent relay's    stream throughput >= 0.5x the persistent relay
  message p99 <= the per-message relay's                   message throughput >= 1.0x the per-message relay
  low rate p99 <= 1.5x the relay of the same mode          nothing lost, order kept, everywhere
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import uuid as uuidlib
from typing import Any, Callable, Iterator

from bench.router_bench import SOURCES, Helper, Orchestrator, run_load

LOW_RATE_PER_SOURCE = 10.0
SCENARIOS = (  # key, label, how to set it up
    ("relay", "persistent relay", ("relay", None)),
    ("stream", "ours, stream x1", ("orchestrator", (1, "stream"))),
    ("relaymsg", "per-message relay", ("relay-message", None)),
    ("message", "ours, message x2", ("orchestrator", (2, "message"))),
)
LOADS = ("unpaced", "paced", "low")


@contextlib.contextmanager
def relay(role: str, sink_ports: list[int]) -> Iterator[list[list[Any]]]:
    uuids = [str(uuidlib.uuid4()) for _ in sink_ports]
    helper = Helper("--role", role, "--routes", json.dumps(dict(zip(uuids, sink_ports))))
    try:
        port = helper.read()
        yield [[port, uuid] for uuid in uuids]
    finally:
        helper.stop()


@contextlib.contextmanager
def orchestrator(routers: int, delivery: str, sink_ports: list[int]) -> Iterator[list[list[Any]]]:
    orch = Orchestrator(routers)
    try:
        yield orch.wire(sink_ports, delivery)
    finally:
        orch.stop()


def one_scenario(setup: tuple[str, Any], sinks: Helper, ports: list[int], counts: dict[str, int],
                 rates: dict[str, float]) -> dict[str, dict[str, Any]]:
    kind, args = setup
    opened = relay(kind, ports) if kind != "orchestrator" else orchestrator(*args, ports)
    with opened as targets:
        return {load: run_load(sinks, targets, counts[load], rates[load]) for load in LOADS}


def median(results: list[dict[str, dict[str, Any]]], load: str, figure: str) -> float:
    values = [r[load][figure] for r in results if r[load][figure] is not None]
    return statistics.median(values) if values else float("nan")


def check(label: str, ours: float, reference: float, bound: float, higher_is_better: bool = False) -> str:
    ratio = ours / reference if reference else float("nan")
    met = ratio >= bound if higher_is_better else ratio <= bound
    sign = ">=" if higher_is_better else "<="
    verdict = "met   " if met else "MISSED"
    return f"{verdict}  {label:<24} {ours:>10.3f} vs {reference:>10.3f}  = {ratio:5.2f}x (target {sign} {bound}x)"


def report(by_key: dict[str, list[dict[str, dict[str, Any]]]], rounds: int) -> None:
    print(f"\nmedians of {rounds} alternated rounds (p50/p99 in ms, throughput in msg/s)")
    print(f"{'scenario':<20} {'unpaced msg/s':>13} | {'paced p50':>9} {'p99':>7} | {'low p50':>8} {'p99':>7} | "
          "lost  disorder")
    for key, label, _ in SCENARIOS:
        results = by_key[key]
        lost = sum(r[load]["lost"] for r in results for load in LOADS)
        disorder = sum(r[load]["out_of_order"] for r in results for load in LOADS)
        print(f"{label:<20} {median(results, 'unpaced', 'msgs_per_s'):>13.0f} | "
              f"{median(results, 'paced', 'p50_ms'):>9.3f} {median(results, 'paced', 'p99_ms'):>7.3f} | "
              f"{median(results, 'low', 'p50_ms'):>8.3f} {median(results, 'low', 'p99_ms'):>7.3f} | "
              f"{lost:>4}  {disorder:>8}")
    m: Callable[[str, str, str], float] = lambda key, load, figure: median(by_key[key], load, figure)  # noqa: E731
    print("\ntargets")
    for line in (
        check("stream p99, paced", m("stream", "paced", "p99_ms"), m("relay", "paced", "p99_ms"), 2.0),
        check("stream p50, paced", m("stream", "paced", "p50_ms"), m("relay", "paced", "p50_ms"), 3.0),
        check("stream throughput", m("stream", "unpaced", "msgs_per_s"), m("relay", "unpaced", "msgs_per_s"),
              0.5, True),
        check("message p99, paced", m("message", "paced", "p99_ms"), m("relaymsg", "paced", "p99_ms"), 1.0),
        check("message throughput", m("message", "unpaced", "msgs_per_s"), m("relaymsg", "unpaced", "msgs_per_s"),
              1.0, True),
        check("stream p99, low rate", m("stream", "low", "p99_ms"), m("relay", "low", "p99_ms"), 1.5),
        check("message p99, low rate", m("message", "low", "p99_ms"), m("relaymsg", "low", "p99_ms"), 1.5),
    ):
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced total msg/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the paced run")
    parser.add_argument("--low-seconds", type=float, default=25.0, help="length of the low-rate run")
    parser.add_argument("--messages", type=int, default=25_000, help="unpaced messages per source (stream, relay)")
    parser.add_argument("--message-mode-messages", type=int, default=5_000, help="unpaced per source, per-message mode")
    args = parser.parse_args(argv)
    paced = int(args.rate / SOURCES * args.seconds)
    low = int(LOW_RATE_PER_SOURCE * args.low_seconds)
    print(f"targets benchmark: {SOURCES} sources -> {SOURCES} sinks; paced {args.rate:.0f} msg/s "
          f"({paced * SOURCES} samples), low {LOW_RATE_PER_SOURCE * SOURCES:.0f} msg/s ({low * SOURCES} samples); "
          f"{args.rounds} rounds", flush=True)
    by_key: dict[str, list[dict[str, dict[str, Any]]]] = {key: [] for key, _, _ in SCENARIOS}
    sinks = Helper("--role", "sinks")
    try:
        ports = sinks.read()
        for round_number in range(1, args.rounds + 1):
            for key, label, setup in SCENARIOS:
                unpaced = args.message_mode_messages if key in ("relaymsg", "message") else args.messages
                counts = {"unpaced": unpaced, "paced": paced, "low": low}
                rates = {"unpaced": 0.0, "paced": args.rate, "low": LOW_RATE_PER_SOURCE * SOURCES}
                result = one_scenario(setup, sinks, ports, counts, rates)
                by_key[key].append(result)
                figures = ", ".join(f"{load} {r['msgs_per_s']}/s p50 {r['p50_ms']} p99 {r['p99_ms']} "
                                    f"lost {r['lost']}" for load, r in result.items())
                print(f"round {round_number} {label}: {figures}", flush=True)
    finally:
        sinks.stop()
    report(by_key, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
