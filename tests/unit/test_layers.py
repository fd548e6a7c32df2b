"""Imports flow one way: adapters -> engines -> S3 mechanics and the format -> leaves.

docs/architecture.md draws the same layers. A module may import its own
layer and the ones below; ``_s3`` (bytes to and from S3) and ``_format``
(items to bytes and back) never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import s3dcp

PACKAGE = Path(s3dcp.__file__).parent

# the lowest layer first; a module's layer is that of its longest listed prefix
LAYERS: dict[str, int] = {
    "s3dcp._compat": 0,
    "s3dcp._errors": 0,
    "s3dcp._config": 0,
    "s3dcp._uri": 0,
    "s3dcp._prefix": 0,
    "s3dcp._crc32": 0,
    "s3dcp._ranges": 0,
    "s3dcp._files": 0,
    "s3dcp._progress": 0,
    "s3dcp._interrupts": 0,
    "s3dcp._s3": 1,
    "s3dcp._format": 1,
    "s3dcp._stats": 2,
    "s3dcp._commit": 2,
    "s3dcp._catalog": 2,
    "s3dcp._save": 2,
    "s3dcp._load": 2,
    "s3dcp._sharing": 2,
    "s3dcp._copy": 2,
    "s3dcp._verify": 2,
    "s3dcp._tiered.local": 2,
    "s3dcp._tiered.upload": 2,
    "s3dcp._tiered.discovery": 2,
    "s3dcp._writer": 3,
    "s3dcp._reader": 3,
    "s3dcp._tiered": 3,
    "s3dcp": 4,
    "s3dcp._cli": 4,
    "s3dcp.__main__": 4,
}
APART = ("s3dcp._s3", "s3dcp._format")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")


def imports_of(path: Path) -> set[str]:
    """Every s3dcp module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("s3dcp"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(
                    candidate
                    if (PACKAGE.parent / candidate.replace(".", "/")).exists()
                    or (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                    else node.module
                )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("s3dcp"))
    return found


def test_every_import_points_to_the_same_layer_or_below() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        _, own = layer_of(name)
        for imported in imports_of(path):
            if imported == "s3dcp" and name != "s3dcp":
                continue  # __version__ only
            _, theirs = layer_of(imported)
            if theirs > own:
                wrong.append(f"{name} (layer {own}) imports {imported} (layer {theirs})")
    assert wrong == []


def test_s3_mechanics_and_the_format_do_not_import_each_other() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for mine, other in (APART, APART[::-1]):
            if name.startswith(mine):
                wrong += [f"{name} imports {i}" for i in imports_of(path) if i == other or i.startswith(other + ".")]
    assert wrong == []


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The rules above can fail: a format module importing the S3 client is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from s3dcp._s3.client import S3Client\n")
    assert imports_of(bad) == {"s3dcp._s3.client"}
    assert layer_of("s3dcp._s3.client")[1] == 1 and layer_of("s3dcp._writer")[1] == 3


def test_the_architecture_page_lists_every_module() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    sections = {
        "_s3": page.split("(layer 1, `_s3/`)")[1].split("\nChe")[0],
        "_format": page.split("(layer 1, `_format/`)")[1].split("\nLeaves")[0],
    }
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        top = relative.split("/")[0]
        if top == "_compat":
            wanted, where = "`_compat/`", page
        elif top in sections:
            wanted, where = f"`{path.name}`", sections[top]
        else:
            wanted, where = f"`{relative}`", page
        if path.name == "__init__.py" and top != "__init__.py":
            continue
        if wanted not in where:
            missing.append(relative)
    assert missing == [], "add these to docs/architecture.md"
