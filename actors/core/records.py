"""What a peripheral or route record may hold: names, uuids, and the bounds on a stored config."""
from __future__ import annotations

import json
import re
from typing import Any

from .errors import LimitReached
from .settings import tunable

UUID_PATTERN = re.compile(r"^[0-9a-fA-F-]{36}$")
NAME_PATTERN = re.compile(r"^\S{1,128}$")
COMPACT_SEPARATORS = (",", ":")


def nesting_depth(value: Any, stop_after: int) -> int:
    """Levels of objects and lists in value (a scalar is 0), counted without recursion; stops past stop_after."""
    depth, level = 0, [value]
    while depth <= stop_after:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return depth


def check_peripheral_config(value: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse a peripheral config too deep or too big (as compact JSON): it is stored and written on every change."""
    max_depth = int(tunable(settings, "max_peripheral_config_depth"))
    if nesting_depth(value, max_depth) > max_depth:
        raise LimitReached(f"config nested deeper than {max_depth} levels (max_peripheral_config_depth)")
    max_bytes = int(tunable(settings, "max_peripheral_config_bytes"))
    size = len(json.dumps(value, ensure_ascii=False, separators=COMPACT_SEPARATORS).encode("utf-8"))
    if size > max_bytes:
        raise LimitReached(f"config of {size} bytes is over {max_bytes} bytes as stored (max_peripheral_config_bytes)")


def is_uuid(text: Any) -> bool:
    return isinstance(text, str) and bool(UUID_PATTERN.match(text))


BY_PORT_MARKER = "(by port)"  # a route end no peripheral has: delivered by the route's own port, as in the original
