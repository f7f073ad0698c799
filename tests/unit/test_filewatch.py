"""The folder watch that lets the state keeper and the supervisor sleep until a file they own is edited."""
from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from actors.core.filewatch import SAFETY_POLL_S, FolderWatch

WAIT_S = 2.0


def readable(watch: FolderWatch) -> bool:
    fd = watch.fileno()
    assert fd is not None
    return bool(select.select([fd], [], [], WAIT_S)[0])


@pytest.fixture
def watch(tmp_path: Path):
    folder_watch = FolderWatch(tmp_path, ("orch.cf",), poll_s=1.0)
    if folder_watch.fileno() is None:
        pytest.skip("no inotify on this system: the callers poll every poll_s instead")
    yield folder_watch
    folder_watch.close()


def test_a_write_to_a_watched_file_wakes_the_watch(tmp_path: Path, watch: FolderWatch) -> None:
    (tmp_path / "orch.cf").write_text("{}")
    assert readable(watch)
    assert watch.drain() is True
    assert watch.drain() is False, "a drained watch has nothing more to say"


def test_an_editor_saving_by_rename_wakes_the_watch(tmp_path: Path, watch: FolderWatch) -> None:
    (tmp_path / ".orch.cf.swp").write_text("{}")
    os.replace(tmp_path / ".orch.cf.swp", tmp_path / "orch.cf")
    assert readable(watch) and watch.drain() is True


def test_other_files_in_the_folder_are_read_but_not_reported(tmp_path: Path, watch: FolderWatch) -> None:
    (tmp_path / "routes.cf").write_text("{}")
    assert readable(watch)
    assert watch.drain() is False


def test_with_the_kernel_watching_the_stat_poll_is_only_a_safety_net(watch: FolderWatch) -> None:
    assert watch.poll_s == SAFETY_POLL_S


def test_a_folder_that_does_not_exist_falls_back_to_polling(tmp_path: Path) -> None:
    missing = FolderWatch(tmp_path / "missing", ("orch.cf",), poll_s=1.0)
    assert missing.fileno() is None and missing.poll_s == 1.0
    assert missing.drain() is True, "without a watch every check is a real one"
