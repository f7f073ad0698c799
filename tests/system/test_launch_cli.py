"""launch.py's command line: every subcommand takes the common options after its name as well as before."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.instances import REPO_ROOT, Instance


def launch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)


def test_status_takes_config_dir_after_the_subcommand(core: Instance) -> None:
    before = launch("--config-dir", str(core.config_dir), "status", "--json")
    after = launch("status", "--json", "--config-dir", str(core.config_dir))
    assert before.returncode == after.returncode == 0, after.stderr
    assert '"supervisor"' in after.stdout


def test_a_subcommand_option_after_the_name_overrides_only_what_it_gives(tmp_path: Path) -> None:
    done = launch("status", "--config-dir", str(tmp_path / "nothing-here"))
    assert done.returncode == 3 and "not running" in done.stderr and "Traceback" not in done.stderr


def test_logs_takes_config_dir_after_the_subcommand(tmp_path: Path) -> None:
    folder = tmp_path / "logs" / "peripherals"
    folder.mkdir(parents=True)
    (folder / "llm.log").write_text("one\ntwo\n")
    done = launch("logs", "llm", "-n", "1", "--config-dir", str(tmp_path))
    assert done.returncode == 0 and done.stdout == "two\n", done.stderr
