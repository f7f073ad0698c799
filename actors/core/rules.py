"""Per-route rules: a filter (deliver only what matches) and a transform (rewrite before delivery).

Rules are text, stored as the optional ``filter`` / ``transform`` keys of a route in routes.cf,
compiled once when the routing table changes and applied per payload by the routers.

Filters
    re:<regex>                 the payload (as text) contains a match, e.g. ``re:^FINAL:``
    json:<path> <op> <value>   a field of a JSON payload compared with a JSON value,
                               op one of == != > >= < <= ~ (regex), e.g. ``json:final == true``
    json:<path>                the field exists and is truthy
Transforms
    sub:/<regex>/<replacement>/   regex substitution (the first character is the delimiter)
    template:<text>               with {payload} {source} {time} {ts} and {json:<path>}
    json:pick <path>              the field's value (text as is, anything else as JSON)
    json:set <path> = <value>     set a field of the JSON payload to a JSON value
A <path> is dot separated; numbers index lists (``alternatives.0.text``).
"""
from __future__ import annotations

import json
import operator
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

FILTER_KEY = "filter"
TRANSFORM_KEY = "transform"
RULE_KEYS = (FILTER_KEY, TRANSFORM_KEY)
MAX_RULE_CHARS = 1000
# The rule forms, as help shows them (the module docstring explains each).
SYNTAX = {
    FILTER_KEY: ("re:<regex>", "json:<path> ==|!=|>|>=|<|<=|~ <value>", "json:<path>"),
    TRANSFORM_KEY: ("sub:/<regex>/<replacement>/", "template:<text with {payload} {source} {time} {ts} {json:<path>}>",
                    "json:pick <path>", "json:set <path> = <value>"),
}


class RuleError(ValueError):
    """A rule that cannot be compiled; the message says why (shown when the rule is set)."""


class RuleMiss(Exception):
    """A payload a rule cannot apply to (e.g. not JSON); counted as filtered with this reason."""


_MISSING = object()
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
_JSON_FILTER = re.compile(r"^\s*(?P<path>[^\s=!<>~]+)\s*(?:(?P<op>==|!=|>=|<=|>|<|~)\s*(?P<value>.+?))?\s*$")
_PLACEHOLDER = re.compile(r"\{(payload|source|time|ts|json:[^}]+)\}")


def _split_path(path: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not all(parts):
        raise RuleError(f"bad field path {path!r}")
    return parts


def _lookup(document: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(document, dict):
            document = document.get(part, _MISSING)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return _MISSING
        if document is _MISSING:
            return _MISSING
    return document


def _parse_json_payload(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise RuleMiss("payload is not JSON") from None


def _json_value(text: str) -> Any:
    """A JSON literal, or the bare text when it is not one (so ``lang == en`` works)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def compile_filter(rule: str) -> Callable[[bytes], bool]:
    """Turn filter text into a predicate over payload bytes; raise RuleError if it is invalid."""
    kind, _, body = rule.partition(":")
    if kind == "re":
        try:
            pattern = re.compile(body.encode())
        except re.error as exc:
            raise RuleError(f"bad regular expression {body!r}: {exc}") from None
        return lambda payload: pattern.search(payload) is not None
    if kind == "json":
        match = _JSON_FILTER.match(body)
        if not match:
            raise RuleError(f"bad JSON filter {body!r}: expected '<path> <op> <value>'")
        path = _split_path(match["path"])
        if match["op"] is None:
            falsy = (_MISSING, None, False, 0, "", [], {})
            return lambda payload: bool(_lookup(_parse_json_payload(payload), path) not in falsy)
        if match["op"] == "~":
            try:
                field_pattern = re.compile(match["value"])
            except re.error as exc:
                raise RuleError(f"bad regular expression {match['value']!r}: {exc}") from None
            return lambda payload: ((v := _lookup(_parse_json_payload(payload), path)) is not _MISSING
                                    and field_pattern.search(_text(v)) is not None)
        compare, expected = _COMPARE[match["op"]], _json_value(match["value"])

        def json_filter(payload: bytes) -> bool:
            value = _lookup(_parse_json_payload(payload), path)
            if value is _MISSING:
                return False
            try:
                return bool(compare(value, expected))
            except TypeError:
                raise RuleMiss(f"cannot compare {type(value).__name__} with {type(expected).__name__}") from None
        return json_filter
    raise RuleError(f"unknown filter kind {kind!r}: use re:<regex> or json:<path> <op> <value>")


def _compile_sub(body: str) -> Callable[[bytes, str], bytes]:
    if len(body) < 3:
        raise RuleError("sub needs /regex/replacement/")
    delimiter = body[0]
    parts = body[1:].split(delimiter)
    if len(parts) != 3 or parts[2]:
        raise RuleError(f"sub needs {delimiter}regex{delimiter}replacement{delimiter}")
    try:
        pattern = re.compile(parts[0].encode())
        pattern.sub(parts[1].encode(), b"")  # checks the replacement's group references now
    except (re.error, IndexError) as exc:
        raise RuleError(f"bad substitution {body!r}: {exc}") from None
    replacement = parts[1].encode()
    return lambda payload, _source: pattern.sub(replacement, payload)


def _compile_template(body: str) -> Callable[[bytes, str], bytes]:
    fields = _PLACEHOLDER.findall(body)
    json_paths = {f: _split_path(f[5:]) for f in fields if f.startswith("json:")}

    def render(payload: bytes, source: str) -> bytes:
        document = _parse_json_payload(payload) if json_paths else None
        now = time.time()

        def value(match: re.Match) -> str:
            name = match.group(1)
            if name == "payload":
                return payload.decode("utf-8", "replace")
            if name == "source":
                return source
            if name == "time":
                return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
            if name == "ts":
                return f"{now:.3f}"
            found = _lookup(document, json_paths[name])
            if found is _MISSING:
                raise RuleMiss(f"payload has no field {name[5:]!r}")
            return _text(found)
        return _PLACEHOLDER.sub(value, body).replace("\n", " ").encode()
    return render


def _compile_json_transform(body: str) -> Callable[[bytes, str], bytes]:
    verb, _, rest = body.strip().partition(" ")
    if verb == "pick":
        path = _split_path(rest.strip())

        def pick(payload: bytes, _source: str) -> bytes:
            value = _lookup(_parse_json_payload(payload), path)
            if value is _MISSING:
                raise RuleMiss(f"payload has no field {rest.strip()!r}")
            return _text(value).replace("\n", " ").encode()
        return pick
    if verb == "set":
        target, sep, literal = rest.partition("=")
        if not sep:
            raise RuleError("json:set needs <path> = <value>")
        path, value = _split_path(target.strip()), _json_value(literal.strip())

        def set_field(payload: bytes, _source: str) -> bytes:
            document = _parse_json_payload(payload)
            parent = _lookup(document, path[:-1]) if len(path) > 1 else document
            if not isinstance(parent, dict):
                raise RuleMiss(f"cannot set {target.strip()!r}: parent is not an object")
            parent[path[-1]] = value
            return json.dumps(document, ensure_ascii=False).encode()
        return set_field
    raise RuleError(f"unknown JSON transform {verb!r}: use json:pick <path> or json:set <path> = <value>")


def compile_transform(rule: str) -> Callable[[bytes, str], bytes]:
    """Turn transform text into payload, source -> payload; raise RuleError if it is invalid."""
    kind, _, body = rule.partition(":")
    if kind == "sub":
        return _compile_sub(body)
    if kind == "template":
        return _compile_template(body)
    if kind == "json":
        return _compile_json_transform(body)
    raise RuleError(f"unknown transform kind {kind!r}: use sub:, template: or json:")


def check_rule(key: str, rule: str) -> None:
    """Validate rule text for a route key at the time it is set."""
    if key not in RULE_KEYS:
        raise RuleError(f"unknown rule {key!r}: use {' or '.join(RULE_KEYS)}")
    if not isinstance(rule, str) or not rule or len(rule) > MAX_RULE_CHARS or "\n" in rule:
        raise RuleError(f"a rule is one line of at most {MAX_RULE_CHARS} characters")
    (compile_filter if key == FILTER_KEY else compile_transform)(rule)


@dataclass(frozen=True)
class RouteRules:
    """The compiled rules of one route; ``plain`` routes skip all rule work."""

    keep: Callable[[bytes], bool] | None = None
    rewrite: Callable[[bytes, str], bytes] | None = None

    @property
    def plain(self) -> bool:
        return self.keep is None and self.rewrite is None

    @classmethod
    def of(cls, route: dict[str, Any]) -> "RouteRules":
        """Compile a route's rules (already validated when set; a bad one from a hand-edited file raises RuleError)."""
        keep = compile_filter(route[FILTER_KEY]) if route.get(FILTER_KEY) else None
        rewrite = compile_transform(route[TRANSFORM_KEY]) if route.get(TRANSFORM_KEY) else None
        return cls(keep, rewrite)

    def apply(self, payload: bytes, source: str) -> tuple[bytes | None, str | None]:
        """(payload to deliver, None) or (None, why it was filtered)."""
        try:
            if self.keep is not None and not self.keep(payload):
                return None, "no match"
            if self.rewrite is not None:
                return self.rewrite(payload, source), None
        except RuleMiss as miss:
            return None, str(miss)
        return payload, None
