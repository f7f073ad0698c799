"""Route rules: filters, transforms, refusal of bad rules when set, misses counted not crashed."""
import json

import pytest

from actors.core.rules import RouteRules, RuleError, check_rule


def apply(route, payload, source="ASR_Engine"):
    return RouteRules.of(route).apply(payload, source)


def test_a_route_without_rules_is_plain_and_passes_payloads_untouched():
    rules = RouteRules.of({"name": "r"})
    assert rules.plain and rules.apply(b"hello", "x") == (b"hello", None)


def test_regex_filter_delivers_only_matching_payloads():
    route = {"filter": "re:^FINAL:"}
    assert apply(route, b"FINAL: turn left") == (b"FINAL: turn left", None)
    assert apply(route, b"PARTIAL: tu") == (None, "no match")


@pytest.mark.parametrize("rule, payload, delivered", [
    ("json:final == true", {"final": True, "text": "hi"}, True),
    ("json:final == true", {"final": False}, False),
    ("json:type == asr", {"type": "asr"}, True),
    ("json:confidence > 0.8", {"confidence": 0.9}, True),
    ("json:confidence > 0.8", {"confidence": 0.5}, False),
    ("json:meta.lang != \"de\"", {"meta": {"lang": "en"}}, True),
    ("json:alternatives.0.text ~ ^go", {"alternatives": [{"text": "go left"}]}, True),
    ("json:final", {"final": 1}, True),
    ("json:final", {"other": 1}, False),
])
def test_json_field_filters(rule, payload, delivered):
    result, reason = apply({"filter": rule}, json.dumps(payload).encode())
    assert (result is not None) is delivered


def test_a_payload_that_is_not_json_is_filtered_with_a_reason():
    assert apply({"filter": "json:final == true"}, b"plain words") == (None, "payload is not JSON")


def test_sub_transform_strips_a_prefix():
    assert apply({"transform": "sub:/^ASR: //"}, b"ASR: hello there") == (b"hello there", None)


def test_template_transform_uses_payload_source_and_fields():
    out, _ = apply({"transform": "template:[{source}] {payload}"}, b"hi")
    assert out == b"[ASR_Engine] hi"
    out, _ = apply({"transform": "template:say {json:text}"}, b'{"text": "hello"}')
    assert out == b"say hello"


def test_json_pick_and_set():
    assert apply({"transform": "json:pick text"}, b'{"text": "hello", "final": true}') == (b"hello", None)
    out, _ = apply({"transform": "json:set lang = \"en\""}, b'{"text": "hi"}')
    assert json.loads(out) == {"text": "hi", "lang": "en"}


def test_filter_then_transform_together():
    route = {"filter": "json:final == true", "transform": "json:pick text"}
    assert apply(route, b'{"final": true, "text": "go"}') == (b"go", None)
    assert apply(route, b'{"final": false, "text": "g"}') == (None, "no match")


@pytest.mark.parametrize("key, rule", [
    ("filter", "re:(unclosed"), ("filter", "xml://a"), ("filter", "json:"), ("filter", "json:a ~ (bad"),
    ("transform", "sub:/a/b"), ("transform", "sub:/(a/b/"), ("transform", "json:frobnicate x"), ("transform", "json:set a"),
    ("transform", "nope:x"), ("colour", "re:x"), ("filter", ""), ("filter", "re:a\nb"),
])
def test_bad_rules_are_refused_when_set(key, rule):
    with pytest.raises(RuleError):
        check_rule(key, rule)
