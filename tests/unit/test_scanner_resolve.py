"""The scanner's host resolution: an idle sweep must not wake the resolver's thread."""
from __future__ import annotations

import asyncio
import socket

import pytest

from actors.scanner import scanner as scanner_module
from actors.scanner.scanner import Scanner, resolve


def test_an_address_given_as_such_needs_no_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_resolver(*_: object, **__: object) -> None:
        raise AssertionError("getaddrinfo called for a literal address")

    async def resolve_all() -> list[tuple[str, int]]:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_resolver)
        return [await resolve(host) for host in ("127.0.0.1", "::1", "10.20.0.2")]

    assert asyncio.run(resolve_all()) == [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6),
                                          ("10.20.0.2", socket.AF_INET)]


def test_a_name_is_resolved_once_a_minute_not_once_a_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    async def counting_resolve(host: str) -> tuple[str, int]:
        asked.append(host)
        return "127.0.0.1", socket.AF_INET

    monkeypatch.setattr(scanner_module, "resolve", counting_resolve)
    scanner = Scanner.__new__(Scanner)  # only the resolution state matters here
    scanner.resolved, scanner.unresolved_hosts = {}, set()

    async def three_sweeps() -> list[tuple[str, int] | None]:
        return [await scanner._resolve("robot.local") for _ in range(3)]

    assert asyncio.run(three_sweeps()) == [("127.0.0.1", socket.AF_INET)] * 3
    assert asked == ["robot.local"]
