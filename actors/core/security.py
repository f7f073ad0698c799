"""CurveZMQ for bus endpoints that other users or machines can reach.

ipc endpoints stay plain: they live in the owner-only run folder. Every tcp endpoint, loopback
included (any local user can connect to 127.0.0.1), requires CURVE: one server key pair (broker,
gateway data socket, supervisor control) and one client key pair, generated on first use into
``<config>/keys`` with owner-only permissions. A server accepts only clients whose public key lies in
``<config>/keys/authorized/``. A satellite board (``launch.py --join``) needs copies of
``server.key``, ``client.key`` and ``client.key_secret`` in its own ``<config>/keys``; see
README "Several boards".
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

import zmq
import zmq.auth

# the thread authenticator pulls in asyncio (docs/architecture.md, "What imports cost"): imported only where CURVE is on
if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

AUTHORIZED_DIR_NAME = "authorized"


def needs_curve(endpoint: str) -> bool:
    """True for every tcp endpoint: a loopback port is open to every user of the machine, an ipc socket in
    the owner-only run folder is not."""
    return endpoint.startswith("tcp://")


def ensure_keys(keys_dir: Path) -> None:
    """Create the server and client key pairs once, owner-only; authorise the client key."""
    authorized = keys_dir / AUTHORIZED_DIR_NAME
    if (keys_dir / "server.key_secret").exists() and (keys_dir / "client.key_secret").exists():
        return
    keys_dir.mkdir(parents=True, exist_ok=True)
    authorized.mkdir(exist_ok=True)
    os.chmod(keys_dir, 0o700)
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(str(keys_dir), name)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o600)
    shutil.copy2(keys_dir / "client.key", authorized / "client.key")
    log.info("generated CurveZMQ keys in %s", keys_dir)


SATELLITE_KEY_FILES = ("server.key", "client.key", "client.key_secret")


def missing_client_keys(keys_dir: Path) -> list[str]:
    """The key files a satellite (--join) needs from the main board that are not in keys_dir."""
    return [name for name in SATELLITE_KEY_FILES if not (keys_dir / name).is_file()]


def secure_server(sock: zmq.Socket, endpoint: str, keys_dir: str) -> None:
    """Make a binding socket a CURVE server when its endpoint is exposed (call before bind)."""
    if not needs_curve(endpoint):
        return
    ensure_keys(Path(keys_dir))
    public, secret = zmq.auth.load_certificate(str(Path(keys_dir) / "server.key_secret"))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def secure_client(sock: zmq.Socket, endpoint: str, keys_dir: str) -> None:
    """Give a connecting socket the client keys when its endpoint is exposed (call before connect)."""
    if not needs_curve(endpoint):
        return
    server_public, _ = zmq.auth.load_certificate(str(Path(keys_dir) / "server.key"))
    public, secret = zmq.auth.load_certificate(str(Path(keys_dir) / "client.key_secret"))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def start_authenticator(context: zmq.Context, endpoints: list[str], keys_dir: str) -> ThreadAuthenticator | None:
    """Run the ZAP handler that checks client keys, if any of our bound endpoints needs CURVE."""
    if not any(needs_curve(e) for e in endpoints):
        return None
    from zmq.auth.thread import ThreadAuthenticator

    ensure_keys(Path(keys_dir))
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(Path(keys_dir) / AUTHORIZED_DIR_NAME))
    log.info("CurveZMQ authentication on for %s", ", ".join(e for e in endpoints if needs_curve(e)))
    return auth
