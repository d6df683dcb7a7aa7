"""The presets the package ships: model configs (`configs/model/NAME.json`) and training recipes
(`configs/train/NAME.yaml`). A command names them by name, `--model_config base` or `--config tiny`, and works from
any directory, also where the package came from a wheel; any other path means that file or folder."""

import os
from pathlib import Path
from typing import Literal

# `albertagpt/configs` links to the repository's `configs/`; wheels carry its files as package data.
PRESETS_DIR = Path(__file__).parent / "configs"
PRESET_SUFFIXES = {"model": ".json", "train": ".yaml"}
PresetKind = Literal["model", "train"]


def preset_names(kind: PresetKind) -> list[str]:
    return sorted(path.stem for path in (PRESETS_DIR / kind).glob(f"*{PRESET_SUFFIXES[kind]}"))


def resolve_preset(name_or_path: str | Path, kind: PresetKind) -> Path:
    """The shipped preset that a bare name (`tiny`) names, else the path itself: write `./tiny` for a local file or
    folder of a preset's name. Neither is a `FileNotFoundError` listing the presets."""
    name = str(name_or_path)
    preset = PRESETS_DIR / kind / f"{name}{PRESET_SUFFIXES[kind]}"
    if "/" not in name and os.sep not in name and preset.is_file():
        return preset
    path = Path(name_or_path)
    if path.is_file() or (kind == "model" and path.is_dir()):  # a model may continue from a saved folder
        return path
    flag_and_what = {"model": ("model_config", "config JSON file, model folder"), "train": ("config", "recipe file")}
    flag, what = flag_and_what[kind]
    raise FileNotFoundError(
        f"`{flag}` {name!r} is neither a {what} nor a preset name; the {kind} presets are: "
        f"{', '.join(preset_names(kind))}."
    )
