"""The one argument model of every script: a recipe dataclass, filled from `--config recipe.yaml` and then
from `--field value` overrides on the command line.

Each dataclass field is a flag (transformers' `HfArgumentParser` turns the type hints and `help` metadata
into argparse options). An unknown field, in the YAML file or on the command line, is an error naming it.
A field of a training recipe also declares what it does when a run resumes (`OnResume`, see `recipe_field`).
"""

import argparse
import copy
import typing
from collections.abc import Sequence
from dataclasses import MISSING, Field, field, fields
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml
from transformers import HfArgumentParser

from .presets import resolve_preset

Recipe = TypeVar("Recipe")
ON_RESUME = "on_resume"  # the field metadata entry holding a field's `OnResume`


class OnResume(str, Enum):
    """What a recipe field does when a run resumes from a checkpoint written with another value of it."""

    RESTORED = "restored"  # the checkpoint's state overrides it (optimizer hyper-parameters, tokenizer)
    REPORTING = "reporting"  # changes what the run reports or keeps, not the weights it computes
    MUST_MATCH = "must_match"  # what it names must be what the checkpoint holds, compared by content
    TAKES_EFFECT = "takes_effect"  # the resumed run uses the new value and no longer matches an uninterrupted one


def recipe_field(
    default: Any = MISSING,
    *,
    on_resume: OnResume,
    help: str | None = None,
    default_factory: Any = MISSING,  # a zero-argument callable
) -> Any:
    """A recipe field with its command-line `help` and its behaviour on resume, declared together."""
    metadata = {ON_RESUME: on_resume} if help is None else {ON_RESUME: on_resume, "help": help}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def on_resume(item: Field) -> OnResume | None:
    return item.metadata.get(ON_RESUME)


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` passes every metadata entry of a field to `add_argument`; `on_resume` is not argparse's."""

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, item: Field) -> None:
        argparse_field = copy.copy(item)  # HfArgumentParser also rewrites the field's type: leave the class's alone
        argparse_field.metadata = MappingProxyType({k: v for k, v in item.metadata.items() if k != ON_RESUME})
        HfArgumentParser._parse_dataclass_field(parser, argparse_field)


def field_names(recipe_type: type) -> list[str]:
    return [item.name for item in fields(recipe_type) if item.init]


def check_field_names(recipe_type: type, names: Sequence[str], where: str) -> None:
    unknown = [name for name in names if name not in field_names(recipe_type)]
    if unknown:
        raise ValueError(
            f"Unknown field(s) {', '.join(map(repr, unknown))} in {where}; "
            f"{recipe_type.__name__} has: {', '.join(field_names(recipe_type))}."
        )


def list_field_names(recipe_type: type) -> set[str]:
    """The fields typed `list[...]` (or `list[...] | None`)."""
    hints = typing.get_type_hints(recipe_type)
    return {
        name
        for name, hint in hints.items()
        if list in (typing.get_origin(hint), *(typing.get_origin(arg) for arg in typing.get_args(hint)))
    }


def wrap_single_values(recipe_type: type, values: dict[str, Any]) -> dict[str, Any]:
    """`train_files: data.txt` or `report_to: none` in YAML (or as a keyword) means a list of one item, not a list
    of the string's characters."""
    list_fields = list_field_names(recipe_type)
    return {
        name: [value] if name in list_fields and isinstance(value, str) else value for name, value in values.items()
    }


def number_type(hint: Any) -> type | None:
    """`int` or `float` for a field typed so (also `float | None`, ...), else None."""
    return next((kind for kind in (float, int) if kind in (hint, *typing.get_args(hint))), None)


def convert_numbers(recipe_type: type, values: dict[str, Any]) -> dict[str, Any]:
    """PyYAML reads `learning_rate: 1e-3` as a string (YAML 1.1 floats need a dot); argparse converts such a value
    with the field's type, and so does this, for callers that skip argparse. Text fields stay text."""
    hints = typing.get_type_hints(recipe_type)
    converted = dict(values)
    for name, value in values.items():
        kind = number_type(hints.get(name))
        if kind is not None and isinstance(value, str):
            try:
                converted[name] = kind(value)
            except ValueError:
                raise ValueError(f"`{name}` must be a number, got {value!r}.") from None
    return converted


def read_yaml_recipe(path: str | Path) -> dict:
    """The field: value mapping of a recipe file, or of a shipped recipe named by name (`tiny`)."""
    path = resolve_preset(path, "train")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Recipe file {str(path)!r} must hold a mapping of field: value.")
    return values


def load_recipe(recipe_type: type[Recipe], config: str | Path | None = None, **overrides) -> Recipe:
    """The recipe of a YAML file with `overrides` applied, for callers in Python (tests, notebooks)."""
    values = read_yaml_recipe(config) if config is not None else {}
    check_field_names(recipe_type, list(values), f"recipe file {str(config)!r}")
    check_field_names(recipe_type, list(overrides), "the overrides")
    return recipe_type(**convert_numbers(recipe_type, wrap_single_values(recipe_type, {**values, **overrides})))


def parse_recipe(
    recipe_type: type[Recipe], argv: Sequence[str] | None = None, description: str = "", prog: str | None = None
) -> Recipe:
    """`[--config recipe.yaml] [--field value ...]` -> `recipe_type`; `--help` lists every field."""
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument(
        "--config",
        help="YAML file with field: value lines, or a shipped recipe's name (train: tiny, base; sweep: lr_sweep; "
        "quality: quality); flags override it.",
    )
    known, rest = config_parser.parse_known_args(argv)

    parser = RecipeParser(
        recipe_type,
        prog=prog,
        description=description,
        parents=[config_parser],
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if known.config is not None:
        values = read_yaml_recipe(known.config)
        check_field_names(recipe_type, list(values), f"recipe file {known.config!r}")
        # argparse still converts string values with the field's type
        parser.set_defaults(**wrap_single_values(recipe_type, values))
    recipe, *_, unknown = parser.parse_args_into_dataclasses(rest, return_remaining_strings=True)
    if unknown:
        flags = [item.removeprefix("--") for item in unknown if item.startswith("--")]
        check_field_names(recipe_type, flags, "the command line")
        raise ValueError(f"Unexpected command-line arguments {unknown}: give fields as `--field value`.")
    return recipe


__all__ = ["OnResume", "load_recipe", "parse_recipe", "recipe_field"]
