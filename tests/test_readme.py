"""The README's examples run as written, and its test command is the one CI runs."""

import os
import re
from pathlib import Path

import pytest
from helpers import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    """The ```python blocks, in order (```py blocks need the network and are not run)."""
    return re.findall(r"^```python\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_python_blocks_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 5
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = re.search(r"```bash\n(.+)\n```", section("Tests")).group(1)
    assert test_command in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert os.access(REPO_ROOT / ".ci" / "run", os.X_OK)
    quick_start_commands = re.search(r"```bash\n(.+?)```", section("Quick start"), flags=re.DOTALL).group(1)
    setup_and_test = [line for line in quick_start_commands.splitlines() if "pytest" in line]
    assert len(setup_and_test) == 1 and setup_and_test[0].endswith(f"&& {test_command}")
