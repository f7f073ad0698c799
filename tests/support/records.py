"""Records for the state keeper's limits, shared by tests and the state benchmark."""
from __future__ import annotations

from typing import Any


def uid(n: int) -> str:
    """A valid uuid numbered n, easy to read back in a failure."""
    return f"00000000-0000-4000-8000-{n:012d}"


def deep(levels: int) -> dict[str, Any]:
    """{"a": {"a": ... {}}} with `levels` objects."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value
