"""Who may connect and who may administer: allow-lists, the /auth token, refusals, and what never shows the token."""
from __future__ import annotations

import asyncio
import ipaddress
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from actors.gateway.access import AccessPolicy, AuthGuard, token_matches
from actors.core.refusals import RefusalLog
from actors.core.net import effective_address
from actors.gateway.text.handlers import build_registry
from actors.gateway.text.registry import Peer
from actors.state.store import ConfigStore
from actors.core.errors import ErrorCode
from actors.core.protocol import Op
from actors.core.replica import StateReplica
from actors.core.runfolder import ensure_runtime_dirs
from actors.core.settings import ConfigError, Runtime, default_config, validate_config
from actors.state.tables import Tables
from tests.support.instances import Instance, send_line, send_lines, start_instance, wait_until

TOKEN = "s3cret-token-4711"
READ_TIMEOUT_S = 5.0


# ---- units ----------------------------------------------------------------------------
def test_defaults_let_everyone_connect_and_only_loopback_administer() -> None:
    policy = AccessPolicy.from_config(default_config())
    for host in ("10.1.2.3", "192.168.0.7", "2001:db8::1", "127.0.0.1"):
        assert policy.may_connect(effective_address(host, "0.0.0.0"))
    assert policy.is_admin(effective_address("127.0.0.1", "127.0.0.1"))
    assert policy.is_admin(effective_address("::1", "::1"))
    assert not policy.is_admin(effective_address("10.1.2.3", "10.1.2.1"))


def test_a_peer_on_our_own_address_counts_as_this_machine() -> None:
    assert effective_address("192.168.1.5", "192.168.1.5") == ipaddress.ip_address("127.0.0.1")
    assert effective_address("192.168.1.6", "192.168.1.5") == ipaddress.ip_address("192.168.1.6")


def test_ipv4_mapped_ipv6_peers_are_checked_as_ipv4() -> None:
    policy = AccessPolicy.from_config({**default_config(), "allowed_clients": ["10.0.0.0/8"]})
    assert policy.may_connect(effective_address("::ffff:10.2.3.4", "::"))
    assert not policy.may_connect(effective_address("::ffff:11.2.3.4", "::"))


def test_an_empty_list_refuses_everyone() -> None:
    policy = AccessPolicy.from_config({**default_config(), "admin_clients": []})
    assert not policy.is_admin(effective_address("127.0.0.1", "127.0.0.1"))


def test_token_comparison_needs_a_set_token_and_an_exact_match() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN + "x", TOKEN)
    assert not token_matches("", "")


@pytest.mark.parametrize("key, value", [("allowed_clients", "0.0.0.0/0"), ("admin_clients", ["not-a-network"]),
                                        ("admin_clients", [7]), ("admin_token", 1234), ("admin_token", "two words")])
def test_bad_access_settings_are_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigError):
        validate_config({key: value})


def test_a_bad_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"admin_token": "top secret"})
    assert "top secret" not in str(caught.value)


def test_access_settings_are_settable_and_survive_a_reset() -> None:
    tables = Tables(default_config(), [])
    tables.set_config({"values": {"allowed_clients": ["10.0.0.0/8"], "admin_clients": [], "admin_token": TOKEN}})
    tables.reset()
    assert (tables.config["allowed_clients"], tables.config["admin_clients"], tables.config["admin_token"]) == (["10.0.0.0/8"], [], TOKEN)


def test_refusals_are_reported_once_per_address_and_interval() -> None:
    log = RefusalLog(interval_s=60.0, capacity=2)
    assert log.should_report("10.0.0.1", "connect", now=0.0) == 0
    assert log.should_report("10.0.0.1", "connect", now=1.0) is None
    assert log.should_report("10.0.0.1", "connect", now=2.0) is None
    assert log.should_report("10.0.0.2", "connect", now=3.0) == 0
    assert log.should_report("10.0.0.1", "connect", now=61.0) == 2


def test_the_refusal_log_forgets_the_oldest_addresses_beyond_its_capacity() -> None:
    log = RefusalLog(interval_s=60.0, capacity=2)
    for index in range(100):
        log.should_report(f"10.0.0.{index}", "connect", now=float(index))
    assert len(log.last) == 2


class TrustingContext:
    """A CommandContext that answers every request with an empty record."""

    def __init__(self, token: str = "") -> None:
        self.replica = StateReplica()
        self.replica.load_snapshot({"epoch": "e", "seq": 0, "config": {"admin_token": token}, "peripherals": [], "routes": []})
        self.auth_guard = AuthGuard()

    async def request(self, op: Op, **args: Any) -> Any:
        return {"backup": "b", "name": "x", "uuid": "u", "peripheral": {"uuid": "u"}, "removed_routes": []}

    async def settle(self, done: Callable[[StateReplica], bool]) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize("words", sorted(build_registry().admin_commands()))
def test_every_admin_command_is_refused_to_a_non_admin_peer(words: tuple[str, ...]) -> None:
    reply = asyncio.run(build_registry().dispatch(" ".join(words) + " a b c", TrustingContext(), Peer("10.9.8.7", 1, admin=False)))
    assert reply.code == ErrorCode.FORBIDDEN
    assert reply.text.startswith(f"Error: {' '.join(words)} not allowed from 10.9.8.7")


def test_auth_with_the_right_token_grants_admin() -> None:
    reply = asyncio.run(build_registry().dispatch(f"/auth {TOKEN}", TrustingContext(TOKEN), Peer("10.9.8.7", 1, admin=False)))
    assert reply.grant_admin and reply.code == 0


def test_auth_is_off_without_a_token() -> None:
    reply = asyncio.run(build_registry().dispatch("/auth anything", TrustingContext(""), Peer("10.9.8.7", 1, admin=False)))
    assert reply.code == ErrorCode.FORBIDDEN and not reply.grant_admin and "off" in reply.text


def test_backups_and_logs_are_owner_only(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    store.load()
    backup = store.backup()
    runtime = Runtime.for_config_dir(tmp_path)
    ensure_runtime_dirs(runtime)
    for folder in (store.backup_dir, backup, runtime.log_dir, runtime.run_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in (store.config_path, store.routes_path, backup / "orch.cf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---- a real instance ------------------------------------------------------------------
def log_lines(instance: Instance, needle: str) -> list[str]:
    text = (instance.config_dir / "logs" / "gateway.log").read_text(errors="replace")
    return [line for line in text.splitlines() if needle in line]


@pytest.fixture(scope="module")
def fenced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """An instance that lets only 10.0.0.0/8 connect: loopback (the test) is outside."""
    instance = start_instance(tmp_path_factory.mktemp("fenced"), config={"allowed_clients": ["10.0.0.0/8"]})
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """An instance where nobody is an admin network: admin commands need /auth with the token."""
    instance = start_instance(tmp_path_factory.mktemp("guarded"), config={"admin_clients": [], "admin_token": TOKEN})
    try:
        yield instance
    finally:
        instance.stop()


def test_a_client_outside_allowed_clients_gets_one_error_line_and_is_closed(fenced: Instance) -> None:
    assert fenced.command("/help") == "Error: connections not allowed from 127.0.0.1; closing\n"


def test_a_data_port_refuses_a_client_outside_allowed_clients(fenced: Instance) -> None:
    reply = send_line(fenced.data_ports[0], b"00000000-0000-4000-8000-00000000abcd\nhello")
    assert reply.startswith("Error: connections not allowed from 127.0.0.1")


def test_refused_connections_give_one_activity_line_per_address(fenced: Instance) -> None:
    for _ in range(5):
        fenced.command("/list")
    wait_until(lambda: log_lines(fenced, "connection refused: not in allowed_clients from 127.0.0.1"), message="the refusal line")
    assert len(log_lines(fenced, "connection refused")) == 1


def test_a_non_admin_client_may_still_register_and_list(guarded: Instance) -> None:
    assert guarded.command("/register Sensor 00000000-0000-4000-8000-0000000000a1 7000").startswith("/ack ")
    assert "Sensor" in guarded.command("/list")


def test_an_admin_command_from_a_non_admin_client_is_refused(guarded: Instance) -> None:
    reply = guarded.command("/reset")
    assert reply.startswith("Error: /reset not allowed from 127.0.0.1")
    wait_until(lambda: log_lines(guarded, "admin command /reset refused"), message="the refusal activity line")


def test_auth_with_the_token_allows_admin_commands_on_that_connection(guarded: Instance) -> None:
    guarded.command("/register Gadget 00000000-0000-4000-8000-0000000000a2 7001")
    reply = send_lines(guarded.command_port, [f"/auth {TOKEN}", "/remove Gadget"], READ_TIMEOUT_S)
    assert reply.splitlines() == ["Authenticated: admin commands allowed on this connection.", "Peripheral 'Gadget' removed (routes removed: none)."]
    assert guarded.command("/remove Sensor").startswith("Error: /remove not allowed")  # a new connection starts without rights


def test_a_wrong_token_gets_an_error_line_closes_and_is_logged(guarded: Instance) -> None:
    reply = send_lines(guarded.command_port, ["/auth wrong-token", "/help"], READ_TIMEOUT_S)
    assert reply == "Error: wrong token from 127.0.0.1; closing connection\n"
    wait_until(lambda: log_lines(guarded, "/auth refused"), message="the auth failure line")


def test_the_token_never_appears_in_status_logs_or_activity(guarded: Instance) -> None:
    send_lines(guarded.command_port, [f"/auth {TOKEN}", "/auth wrong-token"], READ_TIMEOUT_S)
    assert TOKEN not in guarded.command("/status")
    assert TOKEN not in guarded.command("/help")
    for path in (guarded.config_dir / "logs").iterdir():
        assert TOKEN not in path.read_text(errors="replace"), path.name


def test_access_lists_change_live_through_set_config(guarded: Instance) -> None:
    client = guarded.state_client()
    client.request(Op.SET_CONFIG, values={"admin_clients": ["127.0.0.0/8"]})
    try:
        wait_until(lambda: guarded.command("/routes remove nothing").startswith("Route 'nothing' not found"), message="admin from loopback")
    finally:
        client.request(Op.SET_CONFIG, values={"admin_clients": []})
    wait_until(lambda: "not allowed" in guarded.command("/routes remove nothing"), message="admin withdrawn again")


def test_ctl_runs_admin_commands_through_the_run_folder_without_a_token(
        guarded: Instance, capsys: pytest.CaptureFixture[str]) -> None:
    """admin_clients is empty and a token is set, yet ctl needs none: it talks to its own instance, never a port."""
    from actors.supervisor.cli import run_ctl

    run_ctl(guarded.runtime, "/routes remove nothing")
    assert capsys.readouterr().out == "Route 'nothing' not found.\n"  # past the admin check, without the auth line
