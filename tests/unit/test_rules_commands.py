"""The /routes set command and the rule lines of /routes info, against a fake state keeper."""
from __future__ import annotations

from typing import Any

from actors.gateway.text.registry import text_after
from actors.core.errors import UnknownRoute
from actors.core.protocol import Op
from tests.support.fake_gateway import UUID_A, UUID_B, FakeContext, run


def rule_context() -> FakeContext:
    return FakeContext({Op.SET_ROUTE_RULE: lambda args: {"name": args["name"]}})


def test_filter_and_transform_take_the_rest_of_the_line_with_its_spacing() -> None:
    ctx = rule_context()
    assert run("/routes set r filter json:type == final", ctx) == "Route 'r' filter set: json:type == final"
    assert run("/routes set r transform template:[{source}]   {payload}", ctx) == "Route 'r' transform set: template:[{source}]   {payload}"
    assert [args for _, args in ctx.requests] == [{"name": "r", "key": "filter", "rule": "json:type == final"},
                                                   {"name": "r", "key": "transform", "rule": "template:[{source}]   {payload}"}]


def test_clear_removes_both_rules() -> None:
    ctx = rule_context()
    assert run("/routes set r clear", ctx) == "Route 'r' rules cleared."
    assert ctx.requests == [(Op.SET_ROUTE_RULE, {"name": "r", "key": "clear"})]


def test_a_bad_rule_is_refused_before_the_state_keeper_is_asked() -> None:
    ctx = rule_context()
    assert run("/routes set r filter re:(", ctx).startswith("Error: invalid filter for route 'r': bad regular expression '('")
    assert run("/routes set r transform nope:x", ctx).startswith("Error: invalid transform for route 'r': unknown transform kind 'nope'")
    assert run("/routes set r filter json:a ==", ctx).startswith("Error: invalid filter for route 'r': bad JSON filter")
    assert ctx.requests == []


def test_incomplete_or_unknown_forms_answer_usage() -> None:
    ctx = rule_context()
    for line in ("/routes set r", "/routes set r filter", "/routes set r colour red", "/routes set r clear now"):
        assert run(line, ctx).startswith("Usage: /routes set <route-name> filter <rule> | transform <rule> | clear"), line
    assert ctx.requests == []


def test_unknown_route_keeps_the_routes_wording() -> None:
    ctx = FakeContext({Op.SET_ROUTE_RULE: UnknownRoute("no route named 'r'")})
    assert run("/routes set r filter re:x", ctx) == "Route 'r' not found."


def test_help_documents_every_rule_form() -> None:
    text = run("/routes help", FakeContext())
    for form in ("/routes set", "re:<regex>", "json:<path>", "sub:/<regex>/<replacement>/", "template:", "json:pick", "json:set"):
        assert form in text, form


def test_routes_info_shows_rules_and_filtered_only_where_there_are_some() -> None:
    ctx = FakeContext()
    ctx.add_peripheral("In", UUID_A)
    ctx.add_peripheral("Out", UUID_B)
    base: dict[str, Any] = {"incoming": UUID_A, "outgoing": UUID_B, "incoming_port": 1, "outgoing_port": 2, "last_used": None,
                            "messages": 0, "bytes": 0, "dropped": 0, "filtered": 0, "rate": 0.0}
    ctx.replica.routes["plain"] = {**base, "name": "plain"}
    ctx.replica.routes["ruled"] = {**base, "name": "ruled", "filter": "json:final == true", "transform": "json:pick text", "filtered": 7}
    text = run("/routes info", ctx)
    plain, ruled = text.split("Route Name: ruled")
    assert "Filter" not in plain and "Filtered" not in plain
    assert "  Filter: json:final == true\n  Transform: json:pick text\n  Filtered: 7" in ruled


def test_text_after_keeps_inner_spacing() -> None:
    assert text_after("  /routes set r  filter   re:a  b ", 4) == "re:a  b"
    assert text_after("/routes set r", 4) == ""
