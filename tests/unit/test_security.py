"""Bus exposure rules: CURVE on every tcp endpoint (loopback too), none on owner-only ipc; keys owner-only."""
import stat

import pytest

from actors.core.security import ensure_keys, needs_curve


@pytest.mark.parametrize("endpoint, expected", [
    ("ipc:///tmp/x.ipc", False), ("tcp://127.0.0.1:7000", True), ("tcp://localhost:7000", True), ("tcp://[::1]:7000", True),
    ("tcp://127.8.9.1:7000", True), ("tcp://10.20.0.1:7000", True), ("tcp://0.0.0.0:7000", True), ("tcp://*:7000", True),
    ("tcp://jetson.local:7000", True),
])
def test_curve_is_required_for_every_tcp_endpoint(endpoint, expected):
    assert needs_curve(endpoint) is expected


def test_keys_are_generated_once_with_owner_only_permissions(tmp_path):
    keys = tmp_path / "keys"
    ensure_keys(keys)
    first = (keys / "server.key_secret").read_bytes()
    ensure_keys(keys)
    assert (keys / "server.key_secret").read_bytes() == first
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for path in keys.glob("*.key*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (keys / "authorized" / "client.key").exists()
