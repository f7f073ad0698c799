"""Files: created with defaults, corrupt ones kept aside (never lost), atomic writes, backups."""
import json

from actors.state.store import ConfigStore, atomic_write_json


def test_missing_files_are_created_with_defaults(tmp_path):
    config, routes = ConfigStore(tmp_path).load()
    assert routes == [] and config["command_port"] == 6000
    assert json.loads((tmp_path / "orch.cf").read_text())["script_uuid"] == config["script_uuid"]
    assert json.loads((tmp_path / "routes.cf").read_text()) == []


def test_corrupt_json_is_kept_aside_and_defaults_are_used(tmp_path):
    (tmp_path / "orch.cf").write_text("{not json")
    (tmp_path / "routes.cf").write_text('{"a": 1}')
    store = ConfigStore(tmp_path)
    config, routes = store.load()
    assert routes == [] and config["command_port"] == 6000
    kept = sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert len(kept) == 2 and len(store.kept_aside) == 2
    assert (tmp_path / kept[0]).read_text() == "{not json"


def test_a_wrong_value_resets_only_its_key_and_is_kept_in_a_rejected_file(tmp_path):
    (tmp_path / "orch.cf").write_text(json.dumps({"command_port": "six thousand", "scan_interval": 7, "script_uuid": "keep-me"}))
    store = ConfigStore(tmp_path)
    config, _ = store.load()
    assert (config["command_port"], config["scan_interval"], config["script_uuid"]) == (6000, 7, "keep-me")
    assert not store.kept_aside and len(store.rejected) == 1
    assert store.rejected[0].name.startswith("orch.cf.rejected-")
    assert json.loads(store.rejected[0].read_text())["keys"] == {"command_port": "six thousand"}
    assert any("'command_port'" in line and "six thousand" in line and "6000" in line for _, line in store.notes)


def test_atomic_write_leaves_no_temp_file_and_owner_only_mode(tmp_path):
    target = tmp_path / "x.cf"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.cf"]
    assert target.stat().st_mode & 0o077 == 0


def test_backup_copies_both_files(tmp_path):
    store = ConfigStore(tmp_path)
    store.load()
    folder = store.backup()
    assert sorted(p.name for p in folder.iterdir()) == ["orch.cf", "routes.cf"]


def test_last_good_copy_follows_security_changes_and_is_otherwise_refreshed_at_most_once_a_minute(tmp_path):
    now = [1000.0]
    store = ConfigStore(tmp_path, clock=lambda: now[0])
    config, routes = store.load()
    last_good = tmp_path / "orch.cf.last-good"
    assert json.loads(last_good.read_text())["script_uuid"] == config["script_uuid"]
    assert last_good.stat().st_mode & 0o077 == 0
    config["scan_interval"] = 9
    store.save(config, routes)
    assert json.loads(last_good.read_text())["scan_interval"] == 5  # nothing security-related changed: not rewritten yet
    config["admin_clients"] = ["10.0.0.0/8"]
    store.save(config, routes)
    assert json.loads(last_good.read_text())["admin_clients"] == ["10.0.0.0/8"]  # at once
    config["scan_interval"] = 11
    now[0] += 61
    store.save(config, routes)
    assert json.loads(last_good.read_text())["scan_interval"] == 11


def test_a_last_good_copy_with_unreadable_security_keys_is_not_trusted(tmp_path):
    (tmp_path / "orch.cf.last-good").write_text(json.dumps({"bind_host": 17, "admin_clients": ["0.0.0.0/0"]}))
    (tmp_path / "orch.cf").write_text("nope")
    config, _ = ConfigStore(tmp_path).load()
    assert config["bind_host"] == "127.0.0.1" and config["admin_clients"] == ["127.0.0.0/8", "::1/128"]


def test_an_unreadable_security_key_while_running_falls_back_closed_and_is_kept(tmp_path):
    """The launch refuses it; a state keeper restarted after a hand edit must not open up either."""
    (tmp_path / "orch.cf").write_text(json.dumps({"bind_host": 17, "admin_token": "two words", "scan_interval": 3}))
    store = ConfigStore(tmp_path)
    config, _ = store.load()
    assert (config["bind_host"], config["admin_token"], config["scan_interval"]) == ("127.0.0.1", "", 3)
    [rejected] = store.rejected
    assert json.loads(rejected.read_text())["keys"] == {"bind_host": 17, "admin_token": "two words"}
    assert not any("two words" in line for _, line in store.notes)
