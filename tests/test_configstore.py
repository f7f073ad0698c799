"""Files: created with defaults, corrupt ones kept aside (never lost), atomic writes, backups."""
import json

from actors.configstore import ConfigStore, atomic_write_json


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


def test_wrong_types_count_as_corrupt(tmp_path):
    (tmp_path / "orch.cf").write_text(json.dumps({"command_port": "six thousand"}))
    store = ConfigStore(tmp_path)
    store.load()
    assert store.kept_aside and "six thousand" in store.kept_aside[0].read_text()


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
