"""Who may talk to the gateway, and who may change the system: client allow-lists and the admin token.

Two lists of networks from orch.cf: ``allowed_clients`` (who may connect to the command and
data ports at all; default everything, as the original) and ``admin_clients`` (who may run
administrative commands; default loopback). A client outside ``admin_clients`` gains admin
rights for one connection with ``/auth <admin_token>`` when a token is set. A connection from
one of this machine's own addresses counts as loopback (``launch.py ctl`` and the UI reach a
gateway bound to a LAN address through that address). The token is compared in constant time
and never logged or shown.
"""
from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .settings import ConfigError, default_config, parse_networks

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSAL_REPORT_INTERVAL_S = 60.0  # at most one activity line per address and reason in this time
MAX_TRACKED_ADDRESSES = 1024  # the rate limiter forgets the oldest addresses beyond this (bounded memory)
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


def effective_address(peer_host: str, local_host: str) -> Address | None:
    """The address the lists are checked against: a peer on one of our own addresses is this machine (loopback)."""
    peer, local = parse_address(peer_host), parse_address(local_host)
    if peer is not None and peer == local and not peer.is_loopback:
        return LOOPBACK_V4 if peer.version == 4 else LOOPBACK_V6
    return peer


def in_networks(address: Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address.version == net.version and address in net for net in networks)


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison; an empty token (auth off) matches nothing."""
    import hmac  # here, not at the top: hmac loads OpenSSL (4 MB in every gateway), needed only when /auth is used

    return bool(token) and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


@dataclass(frozen=True)
class AccessPolicy:
    """The allow-lists and token of one config, parsed once per config change."""

    allowed: tuple[Network, ...]
    admins: tuple[Network, ...]
    token: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AccessPolicy":
        """Parse the config's lists; a list that does not parse falls back to its default (validate_config refuses those)."""
        defaults = default_config()

        def networks(key: str) -> tuple[Network, ...]:
            try:
                return tuple(parse_networks(config.get(key, defaults[key]), key))
            except ConfigError:
                return tuple(parse_networks(defaults[key], key))

        token = config.get("admin_token")
        return cls(networks("allowed_clients"), networks("admin_clients"), token if isinstance(token, str) else "")

    def may_connect(self, address: Address | None) -> bool:
        return in_networks(address, self.allowed)

    def is_admin(self, address: Address | None) -> bool:
        return in_networks(address, self.admins)


class RefusalLog:
    """Decides which refusals get an activity line: one per address and reason per interval, bounded memory."""

    def __init__(self, interval_s: float = REFUSAL_REPORT_INTERVAL_S, capacity: int = MAX_TRACKED_ADDRESSES) -> None:
        self.interval_s = interval_s
        self.capacity = capacity
        self.last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.suppressed: dict[tuple[str, str], int] = {}

    def should_report(self, address: str, reason: str, now: float | None = None) -> int | None:
        """None to stay quiet; otherwise how many refusals were kept quiet since the last line."""
        now = time.monotonic() if now is None else now
        key = (address, reason)
        last = self.last.get(key)
        if last is not None and now - last < self.interval_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return None
        self.last[key] = now
        self.last.move_to_end(key)
        while len(self.last) > self.capacity:
            oldest, _ = self.last.popitem(last=False)
            self.suppressed.pop(oldest, None)
        return self.suppressed.pop(key, 0)
