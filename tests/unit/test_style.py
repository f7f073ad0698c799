"""Style rules the tree keeps: lines of at most 120 characters, and no citation of files outside the repository.

Unit tests only: they read files, start nothing.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_LINE_CHARS = 120
# Documents that live outside the repository: code and docs must stand on their own (docs/protocol.md and
# docs/architecture.md are the project's own).
FOREIGN_REFERENCES = ("../shared", "PROTOCOL.md", "DESIGN.md")
SKIPPED_DIRS = {"__pycache__"}

def whole_tree() -> list[Path]:
    """Every Python file of the actors, the launcher and the broker: what the line rule covers once merged."""
    return sorted(REPO.glob("actors/**/*.py")) + [REPO / "launch.py", REPO / "broker.py"]


def documented_files() -> list[Path]:
    """Code and docs the user or a developer reads: actors/, launch.py, broker.py, README.md, docs/."""
    files = [path for folder in ("actors", "docs") for path in (REPO / folder).rglob("*")
             if path.is_file() and not SKIPPED_DIRS & set(path.parts) and path.suffix in (".py", ".md", ".txt")]
    return sorted(files) + [REPO / "launch.py", REPO / "broker.py", REPO / "README.md"]


def shown(path: Path) -> str:
    """A path as a failure message names it: relative to the repository when inside it."""
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def long_lines(path: Path, limit: int = MAX_LINE_CHARS) -> list[str]:
    """'path:line (length)' for each line longer than limit characters (characters, not bytes)."""
    text = path.read_text(encoding="utf-8")
    return [f"{shown(path)}:{number} ({len(line)})"
            for number, line in enumerate(text.splitlines(), start=1) if len(line) > limit]


def foreign_references(path: Path) -> list[str]:
    """'path:line: reference' for each mention of a document outside the repository (case-sensitive)."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        found += [f"{shown(path)}:{number}: {ref}" for ref in FOREIGN_REFERENCES if ref in line]
    return found


def test_the_line_rule_sees_the_whole_tree() -> None:
    """A glob that stopped matching (a folder moved) would silently check less."""
    names = {str(path.relative_to(REPO)) for path in whole_tree()}
    assert {"launch.py", "broker.py", "actors/core/bus.py", "actors/gateway/gateway.py", "actors/ui/app.py"} <= names


@pytest.mark.parametrize("path", whole_tree(), ids=lambda path: str(path.relative_to(REPO)))
def test_no_line_over_limit(path: Path) -> None:
    assert not long_lines(path), f"lines over {MAX_LINE_CHARS} characters: {long_lines(path)}"


def test_long_line_check_counts_characters_at_the_boundary(tmp_path: Path) -> None:
    """120 characters pass, 121 fail; a multi-byte character counts once (the UI's lines have em dashes)."""
    sample = tmp_path / "sample.py"
    sample.write_text("a" * MAX_LINE_CHARS + "\n" + "—" * MAX_LINE_CHARS + "\n" + "b" * (MAX_LINE_CHARS + 1) + "\n",
                      encoding="utf-8")
    assert long_lines(sample) == [f"{sample}:3 ({MAX_LINE_CHARS + 1})"]


def test_no_reference_to_documents_outside_the_repository() -> None:
    files = documented_files()
    assert REPO / "docs" / "architecture.md" in files and REPO / "actors" / "core" / "protocol.py" in files
    found = [hit for path in files for hit in foreign_references(path)]
    assert not found, f"mentions of documents outside the repository: {found}"


def test_foreign_reference_check_is_case_sensitive(tmp_path: Path) -> None:
    """docs/protocol.md is ours and must pass; PROTOCOL.md, DESIGN.md and ../shared/ are not."""
    sample = tmp_path / "sample.md"
    sample.write_text("see docs/protocol.md and docs/design notes\nsee PROTOCOL.md\nper DESIGN.md (x)\n"
                      "in ../shared/STYLE.md\n", encoding="utf-8")
    assert foreign_references(sample) == [f"{sample}:2: PROTOCOL.md", f"{sample}:3: DESIGN.md",
                                          f"{sample}:4: ../shared"]


def test_every_relative_import_resolves_including_those_inside_functions() -> None:
    """A lazy import (inside a function, for memory) is not run by importing the module: a file moved to
    another package depth would fail only when that function first runs, in production."""
    unresolved = []
    for path in sorted(REPO.glob("actors/**/*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = ".".join(base + ([node.module] if node.module else []))
                if importlib.util.find_spec(target) is None:
                    unresolved.append(f"{shown(path)}:{node.lineno}: {target}")
    assert not unresolved, f"relative imports that name no module: {unresolved}"
