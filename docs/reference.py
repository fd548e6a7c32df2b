"""The settings reference in docs/configuration.md, generated from the public classes' docstrings.

The docstrings are the one place each argument is described; this script
turns their ``Args:``/``Attributes:`` sections into Markdown tables and
writes them between the markers in docs/configuration.md, so the page
cannot say something the code's own documentation does not.
``tests/unit/test_docs.py`` fails when the page and the docstrings differ.

    python docs/reference.py          # rewrite the reference (make docs)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

PAGE = Path(__file__).with_name("configuration.md")
BEGIN = "<!-- reference: generated from the docstrings by docs/reference.py (make docs); edit those, not this -->"
END = "<!-- end of the generated reference -->"

KIB = 1024
MIB = 1024 * KIB


def _markdown(text: str) -> str:
    """reStructuredText roles and literals as Markdown; internal module paths reduced to the public name."""
    text = re.sub(r":(?:class|func|meth|data|attr|mod):`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    return text.replace("``", "`")


def _section(doc: str, name: str) -> dict[str, str]:
    """``name: text`` entries of a Google-style docstring section (``Args:``), continuation lines joined."""
    entries: dict[str, str] = {}
    inside = False
    current = ""
    for line in doc.splitlines():
        if line.strip() == f"{name}:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break
        entry = re.match(r"^    (\w[\w, ]*): (.*)$", line)
        if entry:
            current = entry.group(1)
            entries[current] = entry.group(2)
        elif line.startswith("        ") and current:
            entries[current] += " " + line.strip()
    return {key: _markdown(value) for key, value in entries.items()}


def _default(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return "required"
    if isinstance(value, int) and not isinstance(value, bool) and value >= KIB:
        for unit, size in (("MiB", MIB), ("KiB", KIB)):
            if value % size == 0:
                return f"{value // size} {unit}"
    return f"`{value!r}`"


def _table(documented: dict[str, str], defaults: dict[str, Any]) -> list[str]:
    rows = ["| name | default | what it does |", "| --- | --- | --- |"]
    for key, text in documented.items():
        names = [part.strip() for part in key.split(",")]
        default = ", ".join(_default(defaults[n]) for n in names if n in defaults) or "-"
        rows.append(f"| `{'`, `'.join(names)}` | {default} | {text.replace('|', '&#124;')} |")
    return rows


def _class(cls: type, section: str) -> list[str]:
    doc = inspect.getdoc(cls) or ""
    summary = _markdown(doc.split("\n\n")[0].replace("\n", " "))
    if dataclasses.is_dataclass(cls):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        title = f"### `{cls.__name__}` (keyword-only, frozen)"
    else:
        parameters = inspect.signature(cls).parameters
        defaults = {name: p.default for name, p in parameters.items()}
        title = f"### `{cls.__name__}({', '.join(parameters)})`"
    documented = _section(doc, section)
    missing = sorted(set(defaults) - {n.strip() for key in documented for n in key.split(",")})
    if missing:
        raise ValueError(f"{cls.__name__}'s docstring does not describe {missing}: add them to its {section}: section")
    return [title, "", summary, "", *_table(documented, defaults), ""]


def reference() -> str:
    """The generated Markdown, markers excluded."""
    import s3dcp

    lines: list[str] = []
    for cls, section in (
        (s3dcp.S3StorageWriter, "Args"),
        (s3dcp.S3StorageReader, "Args"),
        (s3dcp.S3ClientConfig, "Attributes"),
        (s3dcp.TieredStorageWriter, "Args"),
        (s3dcp.TieredStorageReader, "Args"),
    ):
        lines += _class(cls, section)
    return "\n".join(lines).rstrip("\n")


def current(page: str) -> str:
    """What ``page`` holds between the markers."""
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    return page[start:end].strip("\n")


def main() -> None:
    page = PAGE.read_text()
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    PAGE.write_text(page[:start] + "\n" + reference() + "\n" + page[end:])
    print(f"wrote the reference into {PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
