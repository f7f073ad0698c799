"""The run folder holds the bus sockets: private, unpredictable when it lives in /tmp, never taken from someone else."""
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from actors.core.runfolder import UnsafeRunDir, check_run_dir, claim_run_dir, release_run_dir
from actors.core.settings import RUN_POINTER_FILE_NAME, Runtime, run_dir_for
from tests.support.instances import REPO_ROOT, start_instance, wait_until, write_test_config

OTHER_UID = 65534  # nobody: we run as root in the test container, so we can make folders that are not ours


def long_config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / ("a-rather-long-folder-name-" * 3) / ("and-another-one-" * 3) / "config"
    assert len(str(folder / "run" / "state-front.ipc")) > 107
    return folder


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def launch(config_dir: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", "--headless", "--config-dir", str(config_dir), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_a_long_config_path_gets_a_fresh_private_folder_recorded_owner_only(tmp_path):
    """Old code: /tmp/orch-<crc32 of the path>, which any local user could create first."""
    config_dir = long_config_dir(tmp_path)
    config_dir.mkdir(parents=True)
    first = claim_run_dir(config_dir)
    pointer = config_dir / RUN_POINTER_FILE_NAME
    assert first.parent == Path(tempfile.gettempdir()) and first.name.startswith("orch-") and first.name != "orch-"
    assert mode(first) == 0o700 and os.lstat(first).st_uid == os.getuid()
    assert mode(pointer) == 0o600 and pointer.read_text().strip() == str(first)
    assert run_dir_for(config_dir) == first  # what clients (ctl, status, ui) follow
    second = claim_run_dir(config_dir)  # the next start: a new unpredictable name, the stale one removed
    assert second != first and not first.exists() and run_dir_for(config_dir) == second
    release_run_dir(config_dir, second)
    assert not second.exists() and not pointer.exists()


def test_an_instance_on_a_long_config_path_runs_and_answers_through_its_private_folder(tmp_path):
    config_dir = long_config_dir(tmp_path)
    instance = start_instance(config_dir.parent, only=["broker", "state"], wait=False)
    try:
        pointer = config_dir / RUN_POINTER_FILE_NAME
        wait_until(pointer.exists, 10, message="the run folder record")
        instance.runtime = Runtime.for_config_dir(config_dir)
        instance.wait_ready()
        run_dir = Path(pointer.read_text().strip())
        assert (run_dir / "state-front.ipc").exists() and mode(run_dir) == 0o700 and mode(pointer) == 0o600
        status = launch(config_dir, "status")
        assert status.returncode == 0 and "state" in status.stdout, status.stderr
    finally:
        instance.stop()
    assert not run_dir.exists() and not pointer.exists()  # a clean stop leaves nothing in /tmp


@pytest.mark.parametrize("wrong", ["mode", "owner", "symlink"])
def test_a_pre_created_run_folder_that_is_not_ours_and_private_is_refused(tmp_path, wrong):
    config_dir = tmp_path / "config"
    write_test_config(config_dir)
    run_dir = config_dir / "run"
    if wrong == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        run_dir.symlink_to(tmp_path / "elsewhere")
    else:
        run_dir.mkdir()
        os.chmod(run_dir, 0o755 if wrong == "mode" else 0o700)
        if wrong == "owner":
            os.chown(run_dir, OTHER_UID, OTHER_UID)
    before = os.lstat(run_dir)
    result = launch(config_dir, "--only", "broker,state")
    assert result.returncode == 2, result.stderr
    expected = {"mode": "mode 0755", "owner": f"belongs to uid {OTHER_UID}", "symlink": "not a folder"}[wrong]
    assert expected in result.stderr and "refusing" in result.stderr
    after = os.lstat(run_dir)
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)  # never chmod/chown someone else's folder
    assert not list(run_dir.glob("*.ipc"))


def test_clients_refuse_a_run_folder_that_is_not_ours(tmp_path):
    """status/ctl/stop would otherwise talk to whatever socket another user put there."""
    config_dir = tmp_path / "config"
    write_test_config(config_dir)
    (config_dir / "run").mkdir(mode=0o700)
    os.chown(config_dir / "run", OTHER_UID, OTHER_UID)
    for command in (["status"], ["stop"], ["ctl", "/status"]):
        result = launch(config_dir, *command)
        assert result.returncode == 3 and f"belongs to uid {OTHER_UID}" in result.stderr, (command, result.stderr)


def test_check_run_dir_accepts_only_our_private_folder(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(UnsafeRunDir, match="not running"):
        check_run_dir(folder)
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    check_run_dir(folder)
    os.chmod(folder, 0o770)
    with pytest.raises(UnsafeRunDir, match="mode 0770"):
        check_run_dir(folder)
