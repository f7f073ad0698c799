"""Route rules benchmark: what a rule costs per message, and that plain routes do not pay for rules elsewhere.

    python -m bench.rules_bench [--messages N] [--rounds R] [--idle-ruled-routes K] [--micro-only]

1. Micro: RouteRules.apply per payload (us/message) for each rule kind, on a typical ASR JSON line,
   next to the plain path (a route without rules never calls apply at all).
2. End to end (launch.py --headless, 1 router, 4 sources -> 4 sinks in stream mode, bench/router_bench.py's
   sources and sinks), unpaced throughput in one running system:
     plain            4 plain routes
     plain+ruled      the same 4 plain routes while K other routes (idle sources) carry filters and transforms
     regex filter     re:^\\d+ \\d+  on the 4 routes (matches every payload: all are delivered)
     sub unwrap       sub:/^\\{"line": "(.*)"\\}$/\\1/  on the 4 routes, sources send {"line": "<bench payload>"}
     json transform   json:pick line  on the 4 routes, the same JSON payloads
   plain and plain+ruled alternate --rounds times in the same system (the ruled routes are added and removed
   each round), so drift shows up as noise rather than as a difference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import timeit
import uuid as uuidlib
from typing import Any, Callable


from bench import router_bench as rb
from actors.core.rules import RouteRules

MICRO_REPEATS = 5
MICRO_NUMBER = 20_000
RULES_SETTLE_S = 1.0  # the router picks rule changes up from the bus
ASR_PAYLOAD = json.dumps({"text": "turn on the light in the kitchen", "final": True, "confidence": 0.93,
                          "alternatives": [{"text": "turn on the light in the kitchen"}]}).encode()
TEXT_PAYLOAD = b"FINAL: turn on the light in the kitchen please"
MICRO_RULES: list[tuple[str, dict[str, str], bytes]] = [
    ("regex filter (match)", {"filter": "re:^FINAL:"}, TEXT_PAYLOAD),
    ("regex filter (miss)", {"filter": "re:^PARTIAL:"}, TEXT_PAYLOAD),
    ("sub transform", {"transform": "sub:/^FINAL: //"}, TEXT_PAYLOAD),
    ("template transform", {"transform": "template:{source}: {payload}"}, TEXT_PAYLOAD),
    ("json filter final == true", {"filter": "json:final == true"}, ASR_PAYLOAD),
    ("json filter confidence >= 0.9", {"filter": "json:confidence >= 0.9"}, ASR_PAYLOAD),
    ("json transform pick text", {"transform": "json:pick text"}, ASR_PAYLOAD),
    ("json transform set field", {"transform": "json:set routed = true"}, ASR_PAYLOAD),
    ("json filter + json pick", {"filter": "json:final == true", "transform": "json:pick text"}, ASR_PAYLOAD),
]
IDLE_RULES = ["re:^FINAL:", "json:final == true", "json:confidence >= 0.5"]
IDLE_TRANSFORMS = ["sub:/^FINAL: //", "json:pick text", "template:{source} {payload}"]
E2E_REGEX = r"re:^\d+ \d+ "
E2E_JSON_TRANSFORM = "json:pick line"
E2E_SUB_UNWRAP = r'sub:/^\{"line": "(.*)"\}$/\1/'  # the same unwrapping by regex: separates JSON cost from payload size


# ---- micro ------------------------------------------------------------------------------------
def per_call_ns(call: Callable[[], Any]) -> float:
    """Best of MICRO_REPEATS runs of MICRO_NUMBER calls, in ns per call."""
    return min(timeit.repeat(call, number=MICRO_NUMBER, repeat=MICRO_REPEATS)) / MICRO_NUMBER * 1e9


def micro() -> list[tuple[str, float]]:
    source = str(uuidlib.uuid4())
    results = [("plain route (no apply call)", per_call_ns(lambda: None))]
    for name, route, payload in MICRO_RULES:
        rules = RouteRules.of(route)
        delivered, why = rules.apply(payload, source)
        assert delivered is not None or why == "no match", (name, why)
        results.append((name, per_call_ns(lambda rules=rules, payload=payload: rules.apply(payload, source))))
    return results


# ---- end to end -------------------------------------------------------------------------------
def role_json_sources(targets: list[list[Any]], count: int) -> None:
    """router_bench's sources, each payload wrapped as {"line": ...} (the json:pick line transform unwraps it).

    The payloads are built before the clock starts, so the sources cost no more than plain ones while
    sending (their timestamps are then early: this run measures throughput, not latency).
    """
    plain = rb.payload
    table = [[json.dumps({"line": plain(source, seq).decode()}).encode() for seq in range(1, count + 1)] for source in range(len(targets))]
    rb.payload = lambda source, seq: table[source][seq - 1]
    rb.role_sources(targets, count, 0)


class JsonSources(rb.Helper):
    """A sources helper process that sends JSON payloads (this script with --role json-sources)."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True, cwd=rb.REPO_ROOT)


def run_unpaced(sinks: rb.Helper, targets: list[list[Any]], count: int, json_payloads: bool = False) -> dict[str, Any]:
    """router_bench.run_load, unpaced, with plain or JSON payloads."""
    if not json_payloads:
        return rb.run_load(sinks, targets, count, 0)
    original = rb.Helper
    rb.Helper = lambda *args: JsonSources("--role", "json-sources", *args[2:]) if args[:2] == ("--role", "sources") else original(*args)
    try:
        return rb.run_load(sinks, targets, count, 0)
    finally:
        rb.Helper = original


def set_rules(orch: rb.Orchestrator, key: str, rule: str | None) -> None:
    """The same rule on the 4 benchmark routes (None clears), then give the router time to apply it."""
    for index in range(rb.SOURCES):
        line = f"/routes set route{index} {key} {rule}" if rule else f"/routes set route{index} clear"
        reply = rb.command(orch.command_port, line)
        if not reply.startswith("Route"):
            raise RuntimeError(f"{line!r}: {reply!r}")
    time.sleep(RULES_SETTLE_S)


def register_idle(orch: rb.Orchestrator, count: int, sink_port: int) -> None:
    """Sources that never send and a sink of their own, for the routes that only carry rules."""
    rb.command(orch.command_port, f"/register IdleSink {uuidlib.uuid4()} {sink_port}")
    for index in range(count):
        rb.command(orch.command_port, f"/register IdleSource{index} {uuidlib.uuid4()} {rb.free_port_block(1)}")


def add_idle_ruled_routes(orch: rb.Orchestrator, count: int) -> None:
    """count routes with a filter and a transform each, from the idle sources."""
    for index in range(count):
        for line in (f"/routes add idle{index} IdleSource{index} IdleSink",
                     f"/routes set idle{index} filter {IDLE_RULES[index % len(IDLE_RULES)]}",
                     f"/routes set idle{index} transform {IDLE_TRANSFORMS[index % len(IDLE_TRANSFORMS)]}"):
            reply = rb.command(orch.command_port, line)
            if not reply.startswith("Route"):
                raise RuntimeError(f"{line!r}: {reply!r}")
    time.sleep(RULES_SETTLE_S)


def remove_idle_routes(orch: rb.Orchestrator, count: int) -> None:
    for index in range(count):
        rb.command(orch.command_port, f"/routes remove idle{index}")
    time.sleep(RULES_SETTLE_S)


def end_to_end(messages: int, rounds: int, idle_routes: int) -> dict[str, list[dict[str, Any]]]:
    """Alternate plain / plain+ruled runs in one system, then one run each with a regex filter and a JSON transform."""
    sinks = rb.Helper("--role", "sinks")
    results: dict[str, list[dict[str, Any]]] = {"plain": [], "plain+ruled": [], "regex filter": [], "sub unwrap": [], "json transform": []}
    try:
        ports = sinks.read()
        orch = rb.Orchestrator(1)
        try:
            targets = orch.wire(ports, "stream")
            register_idle(orch, idle_routes, rb.free_port_block(1))  # nothing is ever delivered there: no listener needed
            run_unpaced(sinks, targets, messages // 5)  # warm-up: sink connections open
            for round_index in range(rounds):
                print(f"  round {round_index + 1}/{rounds}: plain", flush=True)
                results["plain"].append(run_unpaced(sinks, targets, messages))
                add_idle_ruled_routes(orch, idle_routes)
                print(f"  round {round_index + 1}/{rounds}: plain while {idle_routes} other routes carry rules", flush=True)
                results["plain+ruled"].append(run_unpaced(sinks, targets, messages))
                remove_idle_routes(orch, idle_routes)
            print("  regex filter on the measured routes", flush=True)
            set_rules(orch, "filter", E2E_REGEX)
            results["regex filter"].append(run_unpaced(sinks, targets, messages))
            set_rules(orch, "filter", None)
            print("  sub transform unwrapping JSON payloads (the same payloads as the json transform)", flush=True)
            set_rules(orch, "transform", E2E_SUB_UNWRAP)
            results["sub unwrap"].append(run_unpaced(sinks, targets, messages, json_payloads=True))
            print("  json transform on the measured routes", flush=True)
            set_rules(orch, "transform", E2E_JSON_TRANSFORM)
            results["json transform"].append(run_unpaced(sinks, targets, messages, json_payloads=True))
        finally:
            orch.stop()
    finally:
        sinks.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("json-sources",), help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=25_000, help="unpaced messages per source per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating plain / plain+ruled runs")
    parser.add_argument("--idle-ruled-routes", type=int, default=48, help="routes with rules on other (idle) sources")
    parser.add_argument("--micro-only", action="store_true", help="only the RouteRules.apply microbenchmark")
    args = parser.parse_args(argv)
    if args.role == "json-sources":
        role_json_sources(json.loads(args.targets), args.count)
        return 0

    print(f"RouteRules.apply per message (best of {MICRO_REPEATS} x {MICRO_NUMBER} calls):")
    for name, ns in micro():
        print(f"  {name:<32} {ns / 1000:8.2f} us")
    if args.micro_only:
        return 0

    print(f"\nend to end: {rb.SOURCES} sources -> {rb.SOURCES} sinks, stream mode, 1 router, {args.messages} unpaced messages per source per run",
          flush=True)
    results = end_to_end(args.messages, args.rounds, args.idle_ruled_routes)
    base = statistics.median(r["msgs_per_s"] for r in results["plain"])
    print(f"\n{'scenario':<16} {'runs':>4} {'msgs/s (median)':>16} {'min':>9} {'max':>9} {'vs plain':>8} {'lost':>5} {'order':>5}")
    for name, runs in results.items():
        rates = [r["msgs_per_s"] for r in runs]
        print(f"{name:<16} {len(runs):>4} {statistics.median(rates):>16.0f} {min(rates):>9} {max(rates):>9} "
              f"{statistics.median(rates) / base:>8.2f} {sum(r['lost'] for r in runs):>5} {sum(r['out_of_order'] for r in runs):>5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
