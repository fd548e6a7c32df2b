"""The documentation says what the code does: the settings reference, the public names, the links."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import s3dcp

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
USER_PAGES = [page for page in PAGES if page.name not in ("architecture.md", "development.md")]


def reference_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_page_holds_the_reference_the_docstrings_give() -> None:
    script = reference_script()
    assert script.current(script.PAGE.read_text()) == script.reference(), (
        "docs/configuration.md differs from the docstrings: run `make docs` and commit the page"
    )


def test_an_undocumented_argument_stops_the_reference() -> None:
    """A new argument without a line in its docstring's Args: section is named, not left out."""
    script = reference_script()

    class Sample:
        """A sample.

        Args:
            described: something.
        """

        def __init__(self, described: int = 1, forgotten: int = 2) -> None: ...

    with pytest.raises(ValueError, match=r"does not describe \['forgotten'\]"):
        script._class(Sample, "Args")


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_name_only_what_s3dcp_exports(page: Path) -> None:
    text = page.read_text()
    assert not re.findall(r"(?:from|import) s3dcp\._", text), "an import from a private module"
    assert not re.findall(r"s3dcp\._\w+\.", text), "a private module's name"
    for names in re.findall(r"from s3dcp import (\([^)]*\)|[^\n]+)", text):
        imported = {name.strip(" ()\n") for name in names.split(",")} - {""}
        assert imported <= set(s3dcp.__all__), f"not exported by s3dcp: {imported - set(s3dcp.__all__)}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_within_the_project_leads_somewhere(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{target}: no such heading in {linked.name}"


def test_the_readme_stays_short() -> None:
    """A newcomer reads it in minutes; the details belong on the docs/ pages."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def shown_commands() -> list[tuple[str, str, set[str]]]:
    """(page, subcommand, its --options) for each ``$ s3dcp ...`` line of a console block."""
    shown = []
    for page in PAGES:
        for line in re.findall(r"^\$ s3dcp (.*)$", page.read_text(), re.MULTILINE):
            command = line.split("#")[0].split()
            shown.append(
                (page.name, command[0], {word.strip("[]") for word in command if word.startswith(("--", "[--"))})
            )
    return shown


def test_every_command_line_the_pages_show_is_one_the_command_takes() -> None:
    shown = shown_commands()
    assert len(shown) >= 10
    for subcommand in sorted({sub for _, sub, _ in shown}):
        result = subprocess.run(
            [sys.executable, "-m", "s3dcp", subcommand, "--help"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"s3dcp {subcommand}: {result.stderr}"
        for page, sub, options in shown:
            if sub == subcommand:
                missing = {option for option in options if option not in result.stdout}
                assert not missing, f"{page} shows s3dcp {sub} {missing}, which its --help does not list"
