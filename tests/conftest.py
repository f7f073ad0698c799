"""Fixtures: real orchestrator instances on loopback (the harness itself is tests/support/instances.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.fakes import FakeListener
from tests.support.instances import Instance, start_instance
from tests.support.scanning import start_scanning


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[Instance]:
    """A full system (broker, state, gateway, one router, scanner) on ephemeral loopback ports."""
    instance = start_instance(tmp_path)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Instance]:
    """Just the broker and the state keeper."""
    instance = start_instance(tmp_path, only=["broker", "state"])
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def fakes() -> Iterator[list[FakeListener]]:
    """Fakes started with tests.support.scanning.start(fakes, ...) are stopped after the test."""
    started: list[FakeListener] = []
    try:
        yield started
    finally:
        for fake in started:
            fake.stop()


@pytest.fixture
def scanning(tmp_path: Path, fakes: list[FakeListener]) -> Iterator[Callable[..., Instance]]:
    """start_scanning(tmp_path, ...) whose instances stop after the test, before the fakes they probe."""
    started: list[Instance] = []

    def start(known_ports: str | None, full: bool = False, **config: Any) -> Instance:
        started.append(start_scanning(tmp_path, known_ports, full, **config))
        return started[-1]
    try:
        yield start
    finally:
        for instance in started:
            instance.stop()
