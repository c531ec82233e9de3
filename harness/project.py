"""The repository's root and its dependency groups (pyproject.toml, PEP 735), read with the
standard library so that nox's own Python can use them."""

from __future__ import annotations

import pathlib
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: nox itself depends on tomli there
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


class ProjectError(ValueError):
    """pyproject.toml lacks a dependency group, or groups include each other; one line."""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_groups(*names: str, pyproject: pathlib.Path = PYPROJECT) -> list[str]:
    """The requirements of the named groups, in order, with `{include-group = ...}` expanded
    (what nox.project.dependency_groups returns)."""
    with open(pyproject, "rb") as f:
        table = tomllib.load(f).get("dependency-groups", {})
    groups = {_normal(k): v for k, v in table.items()}

    def expand(name: str, seen: tuple[str, ...]) -> list[str]:
        key = _normal(name)
        if key in seen:
            raise ProjectError(f"{pyproject}: dependency group {name!r} includes itself")
        if key not in groups:
            raise ProjectError(f"{pyproject}: no dependency group {name!r}")
        out: list[str] = []
        for item in groups[key]:
            out += [item] if isinstance(item, str) else expand(item["include-group"], (*seen, key))
        return out

    return [req for name in names for req in expand(name, ())]
