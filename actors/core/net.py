"""Addresses and hosts, in one place: which host a client or a record names, and which addresses are this machine.

A host is the exact source address a peripheral registered from (127.0.0.1 and 127.0.0.2 are
different hosts); records that name none, or the legacy "localhost", are 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
from typing import Any

from .settings import ConfigError, parse_ports

LOCAL_HOST = "127.0.0.1"  # the host of records that name none, or the legacy "localhost"
LEGACY_LOCAL_NAMES = frozenset({"", "localhost"})


def canonical_host(host: Any) -> str:
    """The exact address a host is known by (IPv4-mapped IPv6 as IPv4); no host or "localhost" is 127.0.0.1."""
    if not isinstance(host, str) or host in LEGACY_LOCAL_NAMES:
        return LOCAL_HOST
    address = parse_address(host)
    return str(address) if address is not None else host


def same_host(recorded: Any, address: Any) -> bool:
    """Whether two host fields name the same source address (127.0.0.1 and 127.0.0.2 are different hosts)."""
    return recorded == address or canonical_host(recorded) == canonical_host(address)


def is_local_host(host: Any, config: dict[str, Any]) -> bool:
    """Loopback or bind_host (the gateway also flags a client that reached us from another of our own addresses)."""
    address = canonical_host(host)
    try:
        if ipaddress.ip_address(address).is_loopback:
            return True
    except ValueError:
        pass
    return address == config.get("bind_host")


def is_own_listener(host: Any, port: Any, config: dict[str, Any], this_machine: bool = False) -> bool:
    """Whether (host, port) is our command or a data port: a peripheral there would get our deliveries as commands."""
    try:
        ours = port == config["command_port"] or port in parse_ports(config["data_port_range"])
    except (KeyError, ConfigError):
        return False
    return ours and (this_machine or is_local_host(host, config))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK_V4 = ipaddress.ip_address("127.0.0.1")
LOOPBACK_V6 = ipaddress.ip_address("::1")


def parse_address(host: str) -> Address | None:
    """The peer's IP address (IPv4-mapped IPv6 as IPv4, scope ids dropped), or None when it is not an IP."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_key(host: str) -> str:
    """The key one client address is counted under (IPv4-mapped IPv6 counts as its IPv4 address)."""
    address = parse_address(host)
    return str(address) if address is not None else host


def effective_address(peer_host: str, local_host: str) -> Address | None:
    """The address the lists are checked against: a peer on one of our own addresses is this machine (loopback)."""
    peer, local = parse_address(peer_host), parse_address(local_host)
    if peer is not None and peer == local and not peer.is_loopback:
        return LOOPBACK_V4 if peer.version == 4 else LOOPBACK_V6
    return peer


def is_this_machine(address: Address | None) -> bool:
    """Exactly 127.0.0.1 or ::1, or our own address (effective_address): launch.py ctl, the UI, local peripherals."""
    return address == LOOPBACK_V4 or address == LOOPBACK_V6
