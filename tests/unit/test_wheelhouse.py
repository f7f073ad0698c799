"""tools/wheelhouse_check.py: a wheelhouse made on Python 3.11 for a 3.10 board is checked with the board's markers.

`pip download --python-version 3.10` evaluates markers against the interpreter running it, so the back-ports a 3.10
board needs (tomli for the launch file reader, exceptiongroup for pytest) were silently missing. These tests build
small fake wheels offline; no network.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "wheelhouse_check.py"
RUN_TIMEOUT_S = 30
PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
[project]
name = "demo"
dependencies = ["pyzmq>=25", "tomli>=1.1; python_version < \\"3.11\\""]
[project.optional-dependencies]
test = ["pytest>=7"]
"""
PYTEST_REQUIRES = ("exceptiongroup>=1; python_version < \"3.11\"", "colorama; sys_platform == \"win32\"",
                   "tomli>=1; python_version < \"3.11\"", "pluggy>=1.5", "tox; extra == \"dev\"")


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A wheel with only the METADATA the check reads."""
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {line}\n" for line in requires)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", metadata)


def check(folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run the check as `make wheelhouse` does, against the small pyproject."""
    pyproject = folder.parent / "pyproject.toml"
    pyproject.write_text(PYPROJECT, encoding="utf-8")
    command = [sys.executable, str(SCRIPT), "--pyproject", str(pyproject), *options, str(folder)]
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


@pytest.fixture()
def house_311(tmp_path: Path) -> Path:
    """What `pip download` run by Python 3.11 fetches: no back-ports."""
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    make_wheel(folder, "pyzmq", "26.0")
    make_wheel(folder, "pytest", "8.3.0", PYTEST_REQUIRES)
    make_wheel(folder, "pluggy", "1.5.0")
    make_wheel(folder, "setuptools", "70.0")
    make_wheel(folder, "wheel", "0.43.0")
    return folder


def test_a_311_wheelhouse_is_incomplete_for_a_310_board_and_says_what_is_missing(house_311: Path) -> None:
    result = check(house_311, "--python-version", "3.10", "--platform", "manylinux2014_aarch64")
    assert result.returncode == 1
    assert "INCOMPLETE" in result.stderr and "tomli" in result.stderr and "exceptiongroup" in result.stderr
    assert "colorama" not in result.stderr and "tox" not in result.stderr  # windows-only and extra-only stay out
    listed = check(house_311, "--python-version", "3.10", "--missing")
    assert listed.returncode == 0
    assert sorted(line.split(">=")[0] for line in listed.stdout.split()) == ["exceptiongroup", "tomli"]


def test_the_same_wheelhouse_is_complete_for_311(house_311: Path) -> None:
    result = check(house_311, "--python-version", "3.11")
    assert result.returncode == 0, result.stderr
    assert check(house_311, "--python-version", "3.11", "--missing").stdout.strip() == ""


def test_adding_the_back_ports_completes_it_and_their_own_dependencies_are_followed(house_311: Path) -> None:
    make_wheel(house_311, "tomli", "2.0.1")
    make_wheel(house_311, "exceptiongroup", "1.2.0", ("typing-extensions>=4.6; python_version < \"3.13\"",))
    assert check(house_311, "--python-version", "3.10", "--missing").stdout.split() == ["typing-extensions>=4.6"]
    make_wheel(house_311, "typing_extensions", "4.12.0")
    result = check(house_311, "--python-version", "3.10", "--platform", "manylinux2014_aarch64")
    assert result.returncode == 0, result.stderr


def test_a_wheel_of_a_version_the_requirement_excludes_does_not_count(house_311: Path) -> None:
    make_wheel(house_311, "tomli", "1.0.0")  # pytest wants tomli>=1 and the project >=1.1
    make_wheel(house_311, "exceptiongroup", "1.2.0")
    result = check(house_311, "--python-version", "3.10")
    assert result.returncode == 1 and "tomli>=1.1" in result.stderr
