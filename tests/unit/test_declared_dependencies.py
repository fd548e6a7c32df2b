"""What pyproject.toml declares is what the code imports, and its floors are the ones the matrix tests."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> dict[str, str]:
    """Runtime dependencies and their lower bounds, by distribution name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement.replace(" ", ""))
        assert match, f"{requirement!r}: every runtime dependency has a tested lower bound (name>=version)"
        bounds[match[1].lower()] = match[2]
    return bounds


def _imported_top_level() -> set[str]:
    names = set()
    for path in (ROOT / "s3dcp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_is_declared() -> None:
    third_party = {
        name
        for name in _imported_top_level()
        if name not in sys.stdlib_module_names and name not in ("s3dcp", "__future__")
    }
    declared = set(_declared())
    assert third_party <= declared, sorted(third_party - declared)
    assert "boto3" not in third_party and "boto3" not in declared  # tests and examples only


def test_floor_constraints_pin_exactly_the_declared_floors() -> None:
    pins = {}
    for line in (ROOT / ".ci" / "constraints-floor.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for name, floor in _declared().items():
        if name == "torch":
            continue  # the matrix keeps the CPU wheel; the torch range is run by hand (docs/stores.md)
        assert pins.get(name) == floor, f"{name}: pyproject says >={floor}, the floor leg installs {pins.get(name)}"
