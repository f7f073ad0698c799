"""Discovery under test: fake peripherals on loopback and a real scanner (with broker and state keeper) probing them."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from actors.core.protocol import Op
from actors.scanner.probe import Target
from tests.support.fakes import FakeListener
from tests.support.instances import Instance, start_instance, wait_until

SCAN_INTERVAL_S = 0.3
SWEEPS_TIMEOUT_S = 15.0  # sweeps are counted in the scanner's heartbeat, which lags by up to a second
OFFLINE_AFTER_SWEEPS = 2


def start(registry: list[FakeListener], fake: FakeListener) -> Any:
    """Start fake and remember it, so the `fakes` fixture stops it after the test."""
    registry.append(fake.start())
    return fake


def target(fake: FakeListener) -> Target:
    """The sweep target for a fake on loopback."""
    return Target("127.0.0.1", "127.0.0.1", socket.AF_INET, fake.port)


def ports_spec(*fakes: FakeListener) -> str:
    """A known_ports value naming exactly these fakes."""
    return ",".join(str(fake.port) for fake in fakes)


def start_scanning(tmp_path: Path, known_ports: str | None, full: bool = False, **config: Any) -> Instance:
    """The scanner (or the full system) sweeping known_ports; None keeps the harness's: our own command port only."""
    settings = {"scan_interval": SCAN_INTERVAL_S, "offline_after_sweeps": OFFLINE_AFTER_SWEEPS, **config}
    if known_ports is not None:
        settings["known_ports"] = known_ports
    return start_instance(tmp_path, only=None if full else ["broker", "state", "scanner"], config=settings)


def peripherals(instance: Instance) -> dict[str, dict[str, Any]]:
    """The state keeper's peripherals by uuid."""
    return {p["uuid"]: p for p in instance.state_client().request(Op.SNAPSHOT)["peripherals"]}


def scanner_stats(instance: Instance) -> dict[str, Any]:
    return next(child["stats"] for child in instance.status()["children"] if child["name"] == "scanner")


def sweeps_done(instance: Instance) -> int:
    return scanner_stats(instance).get("sweeps", 0)


def wait_sweeps(instance: Instance, count: int, timeout: float = SWEEPS_TIMEOUT_S) -> None:
    """Wait until `count` more sweeps have ended."""
    goal = sweeps_done(instance) + count
    wait_until(lambda: sweeps_done(instance) >= goal, timeout, 0.1, f"{count} more sweeps")
