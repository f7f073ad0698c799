"""Actors on several boards: a main instance and a satellite router in separate network namespaces.

The namespace tests need root (``ip netns add``); they make two namespaces joined by a veth pair
with addresses in a test-only subnet (tests/support/netns.py), run ``launch.py --bus`` in A and
``launch.py --join --only router`` plus fake peripherals (tests/support/multihost_peer.py) in B, and
delete everything in the end. The unit tests below them run anywhere.
"""
from __future__ import annotations

import json
import shutil
import signal
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from actors.core.security import ensure_keys, missing_client_keys
from actors.supervisor.supervisor import Supervisor
from actors.core.protocol import Heartbeat
from actors.core.settings import HEARTBEAT_EXPIRY_S, Runtime
from actors.ui.viewmodel import ActorStatus, actors_by_host
from tests.support.instances import REPO_ROOT, wait_until
from tests.support.netns import Host, TwoHosts, unavailable_reason

PY = sys.executable
BUS_PORT = 7100  # inside namespace A, where every port is ours
COMMAND_PORT = 7000
PEER = ("-m", "tests.support.multihost_peer")  # the other board's fake peripherals, run from the repository root
DATA_PORTS = "7001-7040"
SINK_PORT = 7500
SOURCES = 16  # a source lands on the satellite's router with probability 1 - 2**-16
SATELLITE = "sat"
STEP_TIMEOUT_S = 15.0


@dataclass
class Boards:
    """The two namespaces, the main instance's folder and bus address, the peers' status file."""

    hosts: TwoHosts
    root: Path
    main_config: Path
    bus: str

    def status(self) -> dict[str, Any]:
        """`launch.py status --json` of the main board (supervisor table + gateway /status), run inside A."""
        done = self.hosts.run(self.hosts.a, [PY, "launch.py", "--config-dir", str(self.main_config), "--bus", self.bus, "status", "--json"],
                              str(REPO_ROOT))
        if done.returncode != 0:
            return {}
        return json.loads(done.stdout)

    def actors(self) -> dict[str, dict[str, Any]]:
        """Live actors by name, from the gateway's /status."""
        figures = self.status().get("orchestrator") or {}
        return {actor["name"]: actor for actor in figures.get("Actors", [])}

    def peers(self) -> dict[str, Any]:
        path = self.root / "peers.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def command(self, *lines: str) -> str:
        """Admin command lines from the main board itself (its own address counts as loopback)."""
        argv = [PY, *PEER, "cmd", self.hosts.a.address, str(COMMAND_PORT), *lines]
        done = self.hosts.run(self.hosts.a, argv, str(REPO_ROOT))
        return done.stdout

    def start_satellite(self, name: str, keys_from: Path | None) -> Path:
        """A satellite supervisor in B running one router; keys copied from keys_from, or freshly made (wrong) when None."""
        config = self.root / name
        keys = config / "keys"
        if keys_from is None:
            ensure_keys(keys)
        else:
            keys.mkdir(parents=True)
            for file in ("server.key", "client.key", "client.key_secret"):
                shutil.copy2(keys_from / file, keys / file)
        self.hosts.spawn(self.hosts.b, [PY, "launch.py", "--headless", "--config-dir", str(config), "--join", self.bus, "--only", "router",
                                        "--satellite-name", name], str(self.root / f"{name}.out"), str(REPO_ROOT))
        return config


def write_main_config(config_dir: Path, host: Host) -> None:
    config_dir.mkdir(parents=True)
    (config_dir / "orch.cf").write_text(json.dumps({
        "command_port": COMMAND_PORT, "data_port_range": DATA_PORTS, "bind_host": host.address,
        "known_ports": str(COMMAND_PORT), "known_hosts": ["127.0.0.1"],  # the scanner probes only our own (skipped) command port
        "scan_interval": 1, "peripherals": [], "script_uuid": "00000000-0000-4000-8000-000000000008",
    }))


def sink_total(boards: Boards) -> int:
    return int(boards.peers().get("total", 0))


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boards]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"multi-host tests skipped: {reason}")
    hosts = TwoHosts.create()
    try:
        root = tmp_path_factory.mktemp("multihost")
        main_config = root / "main"
        write_main_config(main_config, hosts.a)
        boards = Boards(hosts, root, main_config, f"tcp://{hosts.a.address}:{BUS_PORT}")
        hosts.spawn(hosts.a, [PY, "launch.py", "--headless", "--config-dir", str(main_config), "--bus", boards.bus],
                    str(root / "main.out"), str(REPO_ROOT))
        wait_until(lambda: boards.status().get("supervisor", {}).get("ready"), STEP_TIMEOUT_S, 0.3, "the main board to be ready")
        yield boards
    finally:
        hosts.destroy()


def test_data_routes_across_boards_and_falls_back_when_the_satellite_dies(boards: Boards) -> None:
    hosts = boards.hosts
    boards.start_satellite(SATELLITE, boards.main_config / "keys")
    satellite_router = f"router-1@{SATELLITE}"
    actors = wait_until(lambda: (a := boards.actors()) and satellite_router in a and a, STEP_TIMEOUT_S, 0.3, "the satellite's router in /status")
    assert actors[satellite_router]["host"] == hosts.b.hostname
    assert actors["router-1"]["host"] == hosts.a.hostname
    peers = hosts.spawn(hosts.b, [PY, *PEER, "peers", hosts.a.address, str(COMMAND_PORT), "--bind", hosts.b.address,
                                  "--sink-port", str(SINK_PORT), "--sources", str(SOURCES), "--status", str(boards.root / "peers.json"),
                                  "--rate", "20"], str(boards.root / "peers.out"), str(REPO_ROOT))
    wait_until(lambda: boards.peers().get("ready"), STEP_TIMEOUT_S, 0.2, "the peripherals to register")
    replies = boards.command(*(f"/routes add mh_route_{i} mh_src_{i} mh_sink" for i in range(SOURCES)))
    assert replies.count("added successfully") == SOURCES, replies

    # 1. Data crosses boards both ways: A's router delivers to the sink on B, and so does B's own router.
    def both_routers_delivered() -> dict[str, dict[str, Any]] | None:
        actors = boards.actors()
        return actors if actors.get(satellite_router, {}).get("delivered") and actors.get("router-1", {}).get("delivered") else None
    wait_until(both_routers_delivered, STEP_TIMEOUT_S, 0.3, "both routers to deliver")
    assert boards.peers()["out_of_order"] == 0

    # 2. The satellite supervisor restarts its router locally.
    satellite_status = lambda: json.loads(hosts.run(hosts.b, [PY, "launch.py", "--config-dir", str(boards.root / SATELLITE), "--join",  # noqa: E731
                                                              boards.bus, "status", "--json"], str(REPO_ROOT)).stdout or "{}")
    router_pid = satellite_status()["supervisor"]["children"][0]["pid"]
    os.kill(router_pid, signal.SIGKILL)
    wait_until(lambda: (c := satellite_status()["supervisor"]["children"][0])["restarts"] == 1 and c["ready"], STEP_TIMEOUT_S, 0.3,
               "the satellite router to be restarted")

    # 3. The satellite board goes away (every process of it, the peripherals aside): routing moves back to A.
    killed = hosts.b.kill_all(keep=[peers.pid])
    assert killed, "nothing of the satellite was running"
    wait_until(lambda: satellite_router not in boards.actors(), STEP_TIMEOUT_S, 0.3, "the satellite's router to be counted out")
    before = sink_total(boards)
    wait_until(lambda: sink_total(boards) >= before + SOURCES * 20, STEP_TIMEOUT_S, 0.3, "data to keep arriving through A's router")
    figures = boards.status()["orchestrator"]
    assert figures["Routers Alive"] == 1
    main_router = next(c for c in boards.status()["supervisor"]["children"] if c["name"] == "router-1")
    assert main_router["restarts"] == 0
    assert set(boards.peers()["received"]) == {str(i) for i in range(SOURCES)}


def test_a_satellite_with_the_wrong_keys_is_refused(boards: Boards) -> None:
    boards.start_satellite("intruder", keys_from=None)  # its own freshly generated keys, unknown to the main board
    wait_until(lambda: (boards.root / "intruder" / "logs" / "router-1@intruder.log").exists(), STEP_TIMEOUT_S, 0.2, "the intruder to start")
    time.sleep(HEARTBEAT_EXPIRY_S)  # long enough for its heartbeats to have arrived, were it let in
    status = boards.status()
    names = [a["name"] for a in status["orchestrator"]["Actors"]] + [r["name"] for r in status["supervisor"]["remote"]]
    assert not [n for n in names if n.endswith("@intruder")], names
    assert all(c["state"] == "running" and c["restarts"] == 0 for c in status["supervisor"]["children"] if c["name"] != "router-1")
    for log in (boards.main_config / "logs").glob("*.log"):
        text = log.read_text()
        assert "Traceback" not in text and " CRITICAL " not in text, f"{log.name}: {text[-2000:]}"
    assert "refused a bus connection" in (boards.main_config / "logs" / "broker.log").read_text()


# ---- pieces that run anywhere ---------------------------------------------------------------------
def test_a_satellite_without_the_main_boards_keys_is_told_what_to_copy(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    assert missing_client_keys(keys) == ["server.key", "client.key", "client.key_secret"]
    (keys / "server.key").write_text("x")
    assert missing_client_keys(keys) == ["client.key", "client.key_secret"]


def test_join_refuses_to_start_without_keys(tmp_path: Path) -> None:
    import subprocess
    done = subprocess.run([PY, "launch.py", "--headless", "--config-dir", str(tmp_path / "sat"), "--join", "tcp://10.213.0.1:7100"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert "client.key_secret" in done.stderr and "Several boards" in done.stderr


def test_supervisor_lists_other_boards_actors_and_counts_them_out(tmp_path: Path) -> None:
    supervisor = Supervisor(Runtime.for_config_dir(tmp_path), ["broker", "router"])
    beat = Heartbeat(actor="router-1@pi", pid=42, host="pi", started_at=time.time(), stats={"delivered": 7})
    supervisor._heard_remote(beat, time.time())
    [remote] = supervisor.status()["remote"]
    assert (remote["name"], remote["host"], remote["state"], remote["stats"]["delivered"]) == ("router-1@pi", "pi", "running", 7)
    supervisor.remote["router-1@pi"].last_heartbeat -= HEARTBEAT_EXPIRY_S + 1
    supervisor._expire_remote()
    assert supervisor.status()["remote"][0]["state"] == "lost"


def test_the_ui_groups_actors_by_board_only_when_there_are_several() -> None:
    one = [ActorStatus("broker", 0, 0, host="jetson"), ActorStatus("router-1", 0, 0, host="jetson")]
    assert actors_by_host(one) == "broker router-1"
    two = [*one, ActorStatus("router-1@pi", 0, 0, host="pi")]
    assert actors_by_host(two) == "broker router-1 on jetson; router-1@pi on pi"
