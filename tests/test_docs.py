"""The pages in docs/: their Python examples run, their links lead somewhere, and the generated configuration
reference matches the code.

Fences: a ```python block is executed (each page's blocks in order, in one namespace, from an empty temporary
directory that sees the repository's `configs/`); a ```py block needs the network, a GPU or the output of a long run,
and is shown but not run. tests/test_readme.py does the same for the README.
"""

import dataclasses
import re
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from albertagpt import AlbertAGPTConfig
from albertagpt.cli import OnResume, parse_recipe, recipe_field
from albertagpt.reference import (
    CONFIGURATION_PAGE,
    RECIPES,
    config_fields,
    configuration_page,
    docstring_args,
    recipe_rows,
)

DOC_PAGES = sorted((REPO_ROOT / "docs").glob("*.md"))
LINKED_PAGES = [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", *DOC_PAGES]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", [page for page in DOC_PAGES if python_blocks(page.read_text())], ids=lambda p: p.name)
def test_python_blocks_run_in_order(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(python_blocks(page.read_text()), start=1):
        exec(compile(block, f"{page.name} python block {number}", "exec"), namespace)


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(target)
    assert not broken, f"{page.name} links to missing files or headings: {broken}"


def test_configuration_page_is_current() -> None:
    for recipe_type, _, _ in RECIPES:  # HfArgumentParser rewrites field types: the page must not depend on that
        parse_recipe(recipe_type, [])
    committed = (REPO_ROOT / CONFIGURATION_PAGE).read_text()
    assert committed == configuration_page(), (
        "docs/configuration.md is stale: run `python scripts/generate_configuration_docs.py` and commit it."
    )


def test_every_config_field_is_documented_once() -> None:
    documented = docstring_args(AlbertAGPTConfig)
    fields = [item.name for item in config_fields()]
    assert list(documented) == fields
    assert all(documented.values())


def test_link_check_sees_broken_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](page.md#title) [gone](missing.md) `[code](not-a-link.md)`\n")
    assert relative_links(page) == ["page.md#title", "missing.md"]
    assert heading_anchors(page.read_text()) == {"title"}


def test_recipe_tables_read_help_and_resume_metadata_and_ignore_other_keys() -> None:
    @dataclasses.dataclass
    class Resumable:
        steps: int = recipe_field(3, on_resume=OnResume.TAKES_EFFECT, help="How | many.")
        name: str | None = dataclasses.field(default=None, metadata={"on_resume": OnResume.REPORTING, "other": 1})

    header, rows = recipe_rows(Resumable, None)
    assert header == ["field", "type", "default", "meaning", "on resume"]
    assert rows == [
        ["`steps`", "`int`", "`3`", "How \\| many.", "takes effect"],
        ["`name`", "`str \\| None`", "unset", "", "reporting"],
    ]

    @dataclasses.dataclass
    class NotResumable:  # a tokenizer recipe: nothing to resume, no column
        steps: int = dataclasses.field(default=3, metadata={"help": "How many."})

    assert recipe_rows(NotResumable, None) == (
        ["field", "type", "default", "meaning"],
        [["`steps`", "`int`", "`3`", "How many."]],
    )


def test_tests_named_in_the_fault_table_exist() -> None:
    """docs/training.md names the test behind each fault it describes: each must be one of ours."""
    text = (REPO_ROOT / "docs" / "training.md").read_text()
    named = set(re.findall(r"(?<![\w/])(test_\w+)(?!\.py|\w)", text))
    defined = set()
    for path in (REPO_ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.MULTILINE))
    assert len(named) >= 10 and not named - defined, sorted(named - defined)
