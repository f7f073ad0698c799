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

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from ..core.net import Address, Network, address_key
from ..core.refusals import MAX_TRACKED_ADDRESSES
from ..core.settings import ConfigError, default_config, parse_networks, tunable

log = logging.getLogger(__name__)


AUTH_DELAY_MAX_S = 4.0  # the growing delay before a wrong-token answer stops growing here (the lockout takes over)


def in_networks(address: Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address.version == net.version and address in net for net in networks)


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison; an empty token (auth off) matches nothing."""
    # here, not at the top: hmac loads OpenSSL, needed only for /auth (docs/architecture.md, "What imports cost")
    import hmac

    return bool(token) and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


@dataclass(frozen=True)
class AccessPolicy:
    """The allow-lists and token of one config, parsed once per config change."""

    allowed: tuple[Network, ...]
    admins: tuple[Network, ...]
    token: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AccessPolicy":
        """Parse the config's lists; an unparsable one falls back to its default (validate_config refuses it)."""
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


@dataclass(frozen=True)
class SlotLimits:
    """Connection slots (orch.cf keys max_connections, max_connections_per_address, admin_reserved_connections)."""

    total: int
    per_address: int
    admin_reserved: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SlotLimits":
        return cls(int(tunable(config, "max_connections")), int(tunable(config, "max_connections_per_address")),
                   int(tunable(config, "admin_reserved_connections")))

    @property
    def non_admin_total(self) -> int:
        """Slots open to non-admin clients: the reserve is kept for admins, but never more than half of all slots."""
        return self.total - min(self.admin_reserved, self.total // 2)


@dataclass(frozen=True)
class SlotRefusal:
    """Why a client got no slot: the error line, and whether its own address was the limit."""

    text: str
    per_address: bool = False


class ConnectionSlots:
    """Who holds the gateway's connection slots, so that one address cannot take them all."""

    def __init__(self) -> None:
        self.by_address: dict[str, int] = {}
        self.held = 0

    def claim(self, key: str, trusted: bool, limits: SlotLimits) -> SlotRefusal | None:
        """Take a slot for a client at key, or say why not.

        Trusted clients skip the per-address cap and may use the reserve.
        """
        if trusted and self.held >= limits.total:
            return SlotRefusal(f"Error: too many connections (limit {limits.total}); try again later")
        if not trusted and self.held >= limits.non_admin_total:
            return SlotRefusal(f"Error: too many connections (limit {limits.non_admin_total} for non-admin clients); "
                               "try again later")
        if not trusted and self.by_address.get(key, 0) >= limits.per_address:
            return SlotRefusal(f"Error: too many connections from {key} (limit {limits.per_address} per address); "
                               "try again later", per_address=True)
        self.by_address[key] = self.by_address.get(key, 0) + 1
        self.held += 1
        return None

    def release(self, key: str) -> None:
        """Give back a slot claimed for key (exactly once per successful claim)."""
        left = self.by_address.get(key, 0) - 1
        if left > 0:
            self.by_address[key] = left
        else:
            self.by_address.pop(key, None)
        self.held = max(self.held - 1, 0)


@dataclass(frozen=True)
class AuthLimits:
    """How /auth failures are throttled.

    orch.cf keys auth_max_failures, auth_failure_window, auth_lockout, auth_failure_delay.
    """

    max_failures: int
    window_s: float
    lockout_s: float
    delay_s: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AuthLimits":
        return cls(int(tunable(config, "auth_max_failures")), float(tunable(config, "auth_failure_window")),
                   float(tunable(config, "auth_lockout")), float(tunable(config, "auth_failure_delay")))


class AuthGuard:
    """Per-address /auth failures: each wrong token is answered later than the last, then the address is locked out.

    Failures are recorded before the delay, so guesses sent on many connections at once still
    count toward the lockout. Memory is bounded: the oldest addresses are forgotten first.
    """

    def __init__(self, limits: AuthLimits | None = None, capacity: int = MAX_TRACKED_ADDRESSES) -> None:
        self.limits = limits or AuthLimits.from_config({})
        self.capacity = capacity
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.locked_until: OrderedDict[str, float] = OrderedDict()
        self.lockouts = 0

    def locked_for(self, host: str, now: float | None = None) -> float:
        """Seconds the address stays locked (0 when it may try)."""
        now = time.monotonic() if now is None else now
        key = address_key(host)
        until = self.locked_until.get(key, 0.0)
        if until and until <= now:
            del self.locked_until[key]
        return max(until - now, 0.0)

    def failed(self, host: str, now: float | None = None) -> float:
        """Record a wrong token; the seconds to wait before answering it (may lock the address)."""
        now = time.monotonic() if now is None else now
        key = address_key(host)
        recent = self.failures.pop(key, deque())
        while recent and now - recent[0] > self.limits.window_s:
            recent.popleft()
        recent.append(now)
        if len(recent) >= self.limits.max_failures:
            self._lock(key, len(recent), now)
        else:
            self.failures[key] = recent
            self._forget_oldest(self.failures)
        return min(self.limits.delay_s * 2 ** (len(recent) - 1), AUTH_DELAY_MAX_S)

    def locked(self, now: float | None = None) -> dict[str, float]:
        """Locked addresses and the seconds each has left (for /status)."""
        now = time.monotonic() if now is None else now
        return {key: round(until - now, 1) for key, until in self.locked_until.items() if until > now}

    def _lock(self, key: str, count: int, now: float) -> None:
        self.locked_until[key] = now + self.limits.lockout_s
        self._forget_oldest(self.locked_until)
        self.lockouts += 1
        log.warning("/auth locked for %s for %gs after %d wrong tokens within %gs", key, self.limits.lockout_s, count,
                    self.limits.window_s)

    def _forget_oldest(self, table: OrderedDict) -> None:
        while len(table) > self.capacity:
            table.popitem(last=False)
