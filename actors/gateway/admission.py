"""Who may connect and what a refusal costs: connection slots, allowed and admin clients, refused commands.

``Admission`` is given the gateway's counters and the shared refusal log (one report per address and reason a
minute); it keeps the access policy, slots and /auth guard, re-read from the config by ``configure``.
"""
from __future__ import annotations

import logging
from typing import Any

from ..core.errors import ErrorCode
from ..core.net import effective_address, is_this_machine
from ..core.refusals import RefusalLog
from .access import AccessPolicy, AuthGuard, AuthLimits, ConnectionSlots, SlotLimits
from .text.registry import Command, Peer
from .text.replies import TextReply, error

log = logging.getLogger(__name__)


class Admission:
    """Admit or refuse each client (counted, reported rate-limited); count refused admin commands and identities."""

    def __init__(self, counters: dict[str, int], refusals: RefusalLog) -> None:
        self.counters = counters
        self.refusals = refusals
        self.access = AccessPolicy.from_config({})
        self.slots = ConnectionSlots()
        self.slot_limits = SlotLimits.from_config({})
        self.auth_guard = AuthGuard()

    def configure(self, config: dict[str, Any]) -> None:
        """The config changed: allowed and admin clients, slot limits, /auth throttling."""
        self.access = AccessPolicy.from_config(config)
        self.slot_limits = SlotLimits.from_config(config)
        self.auth_guard.limits = AuthLimits.from_config(config)

    def admit(self, peer_host: str, peer_port: int, local_host: str) -> tuple[Peer, TextReply | None]:
        """Host: the client with its admin right, and a refusal when allowed_clients excludes it."""
        address = effective_address(peer_host, local_host)
        peer = Peer(peer_host, peer_port, admin=self.access.is_admin(address), local_host=local_host)
        if not self.access.may_connect(address):
            self.counters["refused_clients"] += 1
            self.report(peer_host, "connect", "connection refused: not in allowed_clients")
            return peer, error(f"Error: connections not allowed from {peer_host}; closing", ErrorCode.FORBIDDEN,
                               close=True)
        trusted = peer.admin or is_this_machine(address)  # may use the admin reserve, no per-address cap
        refusal = self.slots.claim(peer_host, trusted, self.slot_limits)  # by the raw peer address: no parse each time
        if refusal is None:
            return peer, None
        self.counters["connections_refused"] += 1
        self.counters["connections_refused_per_address"] += refusal.per_address
        self.report(peer_host, "slots", f"connection refused: {refusal.text.removeprefix('Error: ').split(';')[0]}")
        return peer, error(refusal.text, ErrorCode.UNAVAILABLE, close=True)

    def release_slot(self, peer: Peer) -> None:
        """Host: a client admitted earlier is gone."""
        self.slots.release(peer.host)

    def refused_command(self, command: Command | None, peer: Peer) -> None:
        """Count and report (rate-limited) an admin command or /auth refused; never the line (it may hold the token)."""
        if command is not None and command.words == ("/auth",):
            self.counters["auth_failures"] += 1
            self.report(peer.host, "auth", "/auth refused (wrong token or auth off)")
        else:
            self.counters["refused_admin"] += 1
            words = " ".join(command.words) if command is not None else "?"
            self.report(peer.host, "admin", f"admin command {words} refused: not in admin_clients and no /auth")

    def refused_identity(self, host: str, text: str) -> None:
        """Host: a client acted for a peripheral another host registered (counted; logged once a minute per address)."""
        self.counters["refused_identity"] += 1
        self.report(host, "identity", text.removeprefix("Error: "))

    def report(self, host: str, reason: str, text: str) -> None:
        quiet = self.refusals.should_report(host, reason)
        if quiet is not None:
            log.warning("%s from %s%s", text, host, f" ({quiet} more since the last report)" if quiet else "")
