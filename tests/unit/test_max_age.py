"""A sink's own max_age (issue 13, section 6), without sockets: the three ways to set it, bad values refused, the router's bound."""
from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.core.errors import BadArguments
from actors.core.settings import MAX_AGE_MAX_S, MAX_AGE_MIN_S, check_peripheral, default_config, parse_max_age, sink_max_age
from actors.state.tables import Tables

TTS = "37d46837-f12a-4215-bd74-8d123bdb6a3d"
VALID = st.floats(min_value=MAX_AGE_MIN_S, max_value=MAX_AGE_MAX_S, allow_nan=False)
BAD = st.one_of(
    st.floats().filter(lambda v: math.isnan(v) or not MAX_AGE_MIN_S <= v <= MAX_AGE_MAX_S),
    st.integers().filter(lambda v: not MAX_AGE_MIN_S <= v <= MAX_AGE_MAX_S),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(max_size=12).filter(lambda t: not _in_range_decimal(t)),
)


def _in_range_decimal(text: str) -> bool:
    try:
        parse_max_age(text)
    except ValueError:
        return False
    return True


def fresh_tables() -> Tables:
    config = default_config()
    config["data_port_range"] = "7001-7003"
    tables = Tables(config, [], clock=lambda: 100.0)
    tables.register({"name": "TTS_Engine", "uuid": TTS, "port": 6237})
    return tables


def test_each_of_the_three_ways_sets_the_sinks_max_age():
    tables = fresh_tables()
    tables.set_delivery({"peripheral": "TTS_Engine", "mode": "message", "max_age": "5"})
    assert tables.peripherals[TTS]["max_age"] == 5.0
    tables.set_peripheral_config({"uuid": TTS, "config": {"max_age": 2.5, "voice": "en"}})
    assert tables.peripherals[TTS]["max_age"] == 2.5
    tables.seen({"name": "TTS_Engine", "uuid": TTS, "port": 6237, "config": {"max_age": "7"}})
    assert tables.peripherals[TTS]["max_age"] == 2.5  # /config wins for the keys it set, max_age included
    announced = fresh_tables()
    announced.seen({"name": "TTS_Engine", "uuid": TTS, "port": 6237, "config": {"max_age": "7"}})
    assert announced.peripherals[TTS]["max_age"] == 7.0


def test_delivery_without_max_age_keeps_the_one_set():
    tables = fresh_tables()
    tables.set_delivery({"peripheral": "TTS_Engine", "mode": "message", "max_age": "5"})
    tables.set_delivery({"peripheral": "TTS_Engine", "mode": "stream"})
    assert tables.peripherals[TTS]["max_age"] == 5.0 and tables.peripherals[TTS]["delivery"] == "stream"


def test_the_router_bound_is_the_sinks_max_age_else_router_queue_age_s():
    config = {"router_queue_age_s": 30}
    assert sink_max_age({"max_age": 1.5}, config) == 1.5
    assert sink_max_age({}, config) == 30.0
    assert sink_max_age({}, {}) == 60.0
    assert sink_max_age({"max_age": "hand-edited nonsense"}, config) == 30.0


@given(VALID)
def test_any_value_in_range_is_taken_by_delivery(value):
    tables = fresh_tables()
    tables.set_delivery({"peripheral": "TTS_Engine", "mode": "message", "max_age": repr(value)})
    assert tables.peripherals[TTS]["max_age"] == pytest.approx(value)


@given(BAD)
def test_a_bad_max_age_is_refused_by_delivery_and_config_and_changes_nothing(value):
    tables = fresh_tables()
    before = copy.deepcopy(tables.peripherals[TTS])
    with pytest.raises(BadArguments, match="max_age must be a number of seconds"):
        tables.set_delivery({"peripheral": "TTS_Engine", "mode": "stream", "max_age": value})
    with pytest.raises(BadArguments, match="max_age must be a number of seconds"):
        tables.set_peripheral_config({"uuid": TTS, "config": {"max_age": value, "voice": "en"}})
    assert tables.peripherals[TTS] == before


@given(BAD.filter(lambda v: v is not None))
def test_a_bad_max_age_in_info_keeps_the_one_held_and_the_peripheral_is_still_seen(value):
    tables = fresh_tables()
    tables.set_delivery({"peripheral": "TTS_Engine", "mode": "message", "max_age": "5"})
    record, _ = tables.seen({"name": "TTS_Engine", "uuid": TTS, "port": 6237, "config": {"max_age": value, "voice": "en"}})
    assert record["max_age"] == 5.0 and record["online"] is True


def test_a_bad_max_age_in_orch_cf_is_dropped_with_a_note_and_a_good_one_loads():
    good, good_notes = check_peripheral({"name": "TTS_Engine", "uuid": TTS, "port": 6237, "max_age": 5})
    assert good["max_age"] == 5 and good_notes == []
    bad, notes = check_peripheral({"name": "TTS_Engine", "uuid": TTS, "port": 6237, "max_age": "forever"})
    assert "max_age" not in bad and any("max_age" in note for note in notes)
    text, _ = check_peripheral({"name": "TTS_Engine", "uuid": TTS, "port": 6237, "max_age": "2.5"})
    assert text["max_age"] == 2.5
