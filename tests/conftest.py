"""Fixtures: real orchestrator instances on loopback (the harness itself is tests/support/instances.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.instances import Instance, start_instance


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
