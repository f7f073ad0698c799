"""Check that a wheelhouse holds a wheel for every requirement of the project on the *target* Python.

`pip download --python-version 3.10` run by Python 3.11 evaluates environment markers against the running
interpreter, so back-ports such as `tomli` or `exceptiongroup` (needed only below 3.11) are silently left out.
This script walks the requirement closure itself, from pyproject.toml through each wheel's METADATA, with the
markers of the target (python version, platform), and lists what is missing.

    python tools/wheelhouse_check.py [--python-version 3.10] [--platform manylinux2014_aarch64] [--missing] DIR

Without --missing it exits 1 naming every missing requirement; with --missing it prints them (one per line, for
`pip download --no-deps`) and exits 0.
"""
from __future__ import annotations

import argparse
import email.parser
import platform
import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # a bare interpreter: pip always carries its own copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
# what setup installs besides the project's own requirements: the build back-end of the editable install
EXTRA_ROOTS = ("wheel",)
EXTRAS = ("test",)
# platform tag prefix -> (sys_platform, platform_system, os_name)
PLATFORM_SYSTEMS = {"manylinux": ("linux", "Linux", "posix"), "musllinux": ("linux", "Linux", "posix"),
                    "linux": ("linux", "Linux", "posix"), "macosx": ("darwin", "Darwin", "posix"),
                    "win": ("win32", "Windows", "nt")}
MACHINE_PATTERN = re.compile(r"(x86_64|aarch64|arm64|armv7l|i686|ppc64le|s390x|amd64|universal2)$")


def canonical(name: str) -> str:
    """PEP 503 name: `Typing_Extensions` and `typing-extensions` are the same project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment(python_version: str | None, platform_tag: str | None) -> dict[str, str]:
    """The marker environment of the board the wheelhouse is for, not of the machine running pip."""
    env = dict(default_environment())
    if python_version:
        parts = python_version.split(".")
        env["python_version"] = ".".join(parts[:2])
        env["python_full_version"] = ".".join((parts + ["0", "0"])[:3])
        env["implementation_version"] = env["python_full_version"]
    if platform_tag:
        for prefix, (sys_platform, system, os_name) in PLATFORM_SYSTEMS.items():
            if platform_tag.startswith(prefix):
                env.update(sys_platform=sys_platform, platform_system=system, os_name=os_name)
                break
        machine = MACHINE_PATTERN.search(platform_tag)
        if machine:
            env["platform_machine"] = machine.group(1)
    return env


def wheel_index(folder: Path) -> dict[str, list[tuple[Version, Path]]]:
    """Every wheel in the folder by canonical project name (a name may have several versions)."""
    index: dict[str, list[tuple[Version, Path]]] = {}
    for path in sorted(folder.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        try:
            index.setdefault(canonical(name), []).append((Version(version), path))
        except InvalidVersion:
            print(f"ignoring {path.name}: unreadable version", file=sys.stderr)
    return index


def wheel_requirements(path: Path) -> list[Requirement]:
    """The Requires-Dist lines of one wheel's METADATA."""
    with zipfile.ZipFile(path) as wheel:
        metadata_name = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
        text = wheel.read(metadata_name).decode("utf-8")
    message = email.parser.Parser().parsestr(text, headersonly=True)
    return [Requirement(line) for line in message.get_all("Requires-Dist") or []]


def root_requirements(pyproject: Path) -> list[Requirement]:
    """The project's runtime, test and build requirements, as `make setup` installs them."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    lines = list(data["project"].get("dependencies", []))
    for extra in EXTRAS:
        lines += data["project"].get("optional-dependencies", {}).get(extra, [])
    lines += data.get("build-system", {}).get("requires", [])
    return [Requirement(line) for line in [*lines, *EXTRA_ROOTS]]


def applies(requirement: Requirement, env: dict[str, str], extras: frozenset[str]) -> bool:
    """Whether a requirement holds on the target, for a parent installed with these extras."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


def pick(requirement: Requirement, index: dict[str, list[tuple[Version, Path]]]) -> Path | None:
    """The newest wheel in the folder that satisfies the requirement, if any."""
    matching = [(version, path) for version, path in index.get(canonical(requirement.name), [])
                if requirement.specifier.contains(version, prereleases=True)]
    return max(matching)[1] if matching else None


def missing_requirements(folder: Path, env: dict[str, str], roots: list[Requirement]) -> list[Requirement]:
    """Walk the requirement closure on the target; return each requirement no wheel satisfies."""
    index = wheel_index(folder)
    pending = [(requirement, frozenset[str]()) for requirement in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    missing: dict[str, Requirement] = {}
    while pending:
        requirement, parent_extras = pending.pop()
        if not applies(requirement, env, parent_extras):
            continue
        wheel = pick(requirement, index)
        if wheel is None:
            missing.setdefault(canonical(requirement.name), requirement)
            continue
        key = (wheel.name, frozenset(requirement.extras))
        if key not in seen:
            seen.add(key)
            pending += [(child, frozenset(requirement.extras)) for child in wheel_requirements(wheel)]
    return list(missing.values())


def requirement_line(requirement: Requirement) -> str:
    """A requirement without its marker, for `pip download` (the marker was already evaluated for the target)."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def main(argv: list[str] | None = None) -> int:
    """Exit 1 naming what is missing, or print it with --missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--python-version", default=None, help="target Python, e.g. 3.10 (default: this one)")
    parser.add_argument("--platform", default=None, help="target platform tag, e.g. manylinux2014_aarch64")
    parser.add_argument("--missing", action="store_true", help="print missing requirements, one per line")
    parser.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    args = parser.parse_args(argv)
    env = target_environment(args.python_version or None, args.platform or None)
    missing = missing_requirements(args.folder, env, root_requirements(args.pyproject))
    if args.missing:
        print("\n".join(requirement_line(requirement) for requirement in missing))
        return 0
    target = f"Python {env['python_version']} on {args.platform or platform.machine()}"
    if missing:
        names = ", ".join(str(requirement) for requirement in missing)
        print(f"wheelhouse {args.folder} is INCOMPLETE for {target}: no wheel for {names}", file=sys.stderr)
        return 1
    print(f"wheelhouse {args.folder}: a wheel for every requirement of {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
