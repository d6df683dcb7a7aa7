"""`docs/configuration.md`, written from the code: the recipe dataclasses' fields (type, default, `help` metadata)
and the model config's fields (type, default, the `Args` section of `AlbertAGPTConfig`'s docstring).

`scripts/generate_configuration_docs.py` writes the page; a test regenerates it and compares, so the committed page
cannot fall behind the code.
"""

import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

from .cli import on_resume
from .configuration_albertagpt import AlbertAGPTConfig
from .lab import SweepRecipe
from .quality import QualityRecipe
from .tokenizer import TokenizerRecipe
from .training import TrainingRecipe

CONFIGURATION_PAGE = Path("docs") / "configuration.md"
# (recipe, the command that reads it, the recipe it extends: only the fields it adds are listed).
RECIPES = (
    (TrainingRecipe, "albertagpt train", None),
    (TokenizerRecipe, "albertagpt train-tokenizer", None),
    (SweepRecipe, "albertagpt sweep", TrainingRecipe),
    (QualityRecipe, "albertagpt quality", TrainingRecipe),
)


def type_name(hint: Any) -> str:
    """`int`, `str | None`, `list[str]`: a type as it is written in the source."""
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
        return hint.__name__
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(hint))
    return str(hint).replace("typing.", "")


def default_value(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def format_default(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, list):
        return f"`[{', '.join(map(str, value))}]`"
    return f"`{value}`"


def cell(text: str) -> str:
    """Table cell text: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def resume_behaviour(item: dataclasses.Field) -> str | None:
    value = on_resume(item)
    return None if value is None else value.value.replace("_", " ")


def recipe_rows(recipe_type: type, base: type | None) -> tuple[list[str], list[list[str]]]:
    """The header and one row per field of `recipe_type` (without `base`'s fields). An "on resume" column appears for
    recipes of resumable runs, whose every field declares its resume behaviour; other metadata keys are ignored."""
    inherited = {item.name for item in dataclasses.fields(base)} if base else set()
    items = [item for item in dataclasses.fields(recipe_type) if item.init and item.name not in inherited]
    show_resume = all(resume_behaviour(item) for item in items)
    # The annotations, not `Field.type`: transformers' `HfArgumentParser` rewrites the latter (`str | None` -> `str`).
    hints = typing.get_type_hints(recipe_type)
    header = ["field", "type", "default", "meaning"] + (["on resume"] if show_resume else [])
    rows = []
    for item in items:
        row = [f"`{item.name}`", cell(f"`{type_name(hints[item.name])}`"), format_default(default_value(item))]
        row.append(cell(item.metadata.get("help", "")))
        if show_resume:
            row.append(cell(resume_behaviour(item) or ""))
        rows.append(row)
    return header, rows


def docstring_args(cls: type) -> dict[str, str]:
    """The `Args:` section of a class docstring: `name:` lines, each followed by its more deeply indented text; the
    section ends at a blank line."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    section = doc.split("\nArgs:\n", 1)[1].split("\n\n", 1)[0] if "\nArgs:\n" in doc else ""
    lines = section.splitlines()
    entry_indent = len(lines[0]) - len(lines[0].lstrip()) if lines else 0
    args: dict[str, str] = {}
    name = ""
    for line in lines:
        match = re.fullmatch(r"(\w+):", line.strip())
        if match and len(line) - len(line.lstrip()) == entry_indent:
            name = match.group(1)
            args[name] = ""
        else:
            args[name] = f"{args[name]} {line.strip()}".strip()
    return args


def config_fields() -> list[dataclasses.Field]:
    """The fields `AlbertAGPTConfig` declares itself (not the ones every `PreTrainedConfig` has)."""
    own = AlbertAGPTConfig.__annotations__
    return [item for item in dataclasses.fields(AlbertAGPTConfig) if item.name in own]


def config_rows() -> tuple[list[str], list[list[str]]]:
    docs = docstring_args(AlbertAGPTConfig)
    rows = [
        [
            f"`{item.name}`",
            cell(f"`{type_name(item.type)}`"),
            format_default(default_value(item)),
            cell(docs.get(item.name, "")),
        ]
        for item in config_fields()
    ]
    return ["field", "type", "default", "meaning"], rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def configuration_page() -> str:
    parts = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python scripts/generate_configuration_docs.py` from the code; do not edit by hand. -->",
        "",
        "Every field of the recipes the commands read, and of the model config. A recipe is a YAML file "
        "(`--config`: a preset name or a path) whose fields can each be overridden on the command line as "
        "`--field value`; an unknown field is an error that names it. A model config is a JSON file of "
        "`AlbertAGPTConfig` fields (`--model_config`: a preset name, a path, or a saved model folder). "
        "Unset means `None`. Where a table has an *on resume* column, it says what a changed value does when a run "
        "resumes from a checkpoint ([training.md](training.md#resume-crashes-and-faults)).",
    ]
    for recipe_type, command, base in RECIPES:
        doc = inspect.cleandoc(recipe_type.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        parts += ["", f"## `{recipe_type.__name__}`: `{command}`", "", doc]
        if base is not None:
            parts += ["", f"Every `{base.__name__}` field, plus:"]
        parts += ["", markdown_table(*recipe_rows(recipe_type, base))]
    parts += [
        "",
        "## `AlbertAGPTConfig`: the model",
        "",
        inspect.cleandoc(AlbertAGPTConfig.__doc__ or "").split("\n\n")[0].replace("\n", " "),
        "",
        markdown_table(*config_rows()),
        "",
        "Invalid values and combinations raise `ValueError` when the config is created (also as `from_pretrained` "
        "overrides), naming the field.",
    ]
    return "\n".join(parts) + "\n"


def write_configuration_page(path: str | Path = CONFIGURATION_PAGE) -> Path:
    path = Path(path)
    path.write_text(configuration_page())
    return path


__all__ = ["config_fields", "configuration_page", "docstring_args", "write_configuration_page"]
