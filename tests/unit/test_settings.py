"""Port parsing and config validation: one parser, clear errors."""
import pytest

from actors.core.runfolder import claim_run_dir, release_run_dir
from actors.core.settings import ConfigError, Endpoints, Runtime, default_config, parse_ports, run_dir_for, validate_config


def test_parse_ports_accepts_ranges_lists_and_single_ports():
    assert parse_ports("6200-6202,7000") == [6200, 6201, 6202, 7000]
    assert parse_ports(" 5 ") == [5]
    assert parse_ports(6000) == [6000]


@pytest.mark.parametrize("spec", ["", "a-b", "10-5", "0-3", "70000", "1-2-3x", None, True])
def test_parse_ports_rejects_nonsense_with_config_error(spec):
    with pytest.raises(ConfigError):
        parse_ports(spec)


def test_defaults_follow_the_seed_except_known_ports():
    config = default_config()
    assert config["known_ports"] == "6200-6300"
    assert (config["scan_interval"], config["command_port"], config["data_port_range"], config["peripherals"]) == (5, 6000, "6001-6099", [])
    assert len(config["script_uuid"]) == 36


def test_validate_config_fills_missing_keys_and_rejects_wrong_types():
    assert validate_config({"command_port": 7000})["scan_interval"] == 5
    for bad in ({"command_port": "x"}, {"scan_interval": -1}, {"peripherals": {}}, {"known_ports": "x"}, [1]):
        with pytest.raises(ConfigError):
            validate_config(bad)


def test_runtime_survives_json_round_trip(tmp_path):
    runtime = Runtime.for_config_dir(tmp_path)
    assert Runtime.from_json(runtime.to_json()) == runtime


def test_long_config_paths_get_a_short_run_dir(tmp_path):
    deep = tmp_path / ("x" * 120)
    deep.mkdir()
    run_dir = claim_run_dir(deep)  # the supervisor's private folder; clients follow its record
    assert run_dir_for(deep) == run_dir and len(str(run_dir)) < 80
    assert Endpoints.local(run_dir).events_in.startswith("ipc://")
    release_run_dir(deep, run_dir)


@pytest.mark.parametrize("spec", ["٦٠٠٠", "6_000", "6200-6300,", "+5", "5-"])
def test_parse_ports_reads_ascii_digits_only(spec):
    with pytest.raises(ConfigError):
        parse_ports(spec)


@pytest.mark.parametrize("key, value", [("bind_host", 17), ("bind_host", "a b"), ("scan_interval", "5"), ("offline_after_sweeps", 0)])
def test_strict_validation_refuses_what_loading_would_have_to_convert_or_refuse(key, value):
    with pytest.raises(ConfigError) as caught:
        validate_config({key: value})
    assert key in str(caught.value)


def test_config_set_refuses_an_unreadable_bind_host():
    from actors.core.errors import BadArguments
    from actors.state.tables import Tables
    tables = Tables(default_config(), [])
    with pytest.raises(BadArguments, match="bind_host"):
        tables.set_config({"values": {"bind_host": 17}})
    assert tables.config["bind_host"] == "0.0.0.0"
