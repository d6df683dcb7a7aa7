"""The presets the package ships: model configs (`configs/model/NAME.json`) and training recipes
(`configs/train/NAME.yaml`). A command names them by name, `--model_config base` or `--config tiny`, and works from
any directory, also where the package came from a wheel; a path that exists still means that file or folder."""

from pathlib import Path
from typing import Literal

# `albertagpt/configs` links to the repository's `configs/`; wheels carry its files as package data.
PRESETS_DIR = Path(__file__).parent / "configs"
PRESET_SUFFIXES = {"model": ".json", "train": ".yaml"}
PresetKind = Literal["model", "train"]


def preset_names(kind: PresetKind) -> list[str]:
    return sorted(path.stem for path in (PRESETS_DIR / kind).glob(f"*{PRESET_SUFFIXES[kind]}"))


def resolve_preset(name_or_path: str | Path, kind: PresetKind) -> Path:
    """`name_or_path` itself where it exists, else the shipped preset of that name; a name that is neither is a
    `FileNotFoundError` listing the presets."""
    path = Path(name_or_path)
    if path.exists():
        return path
    preset = PRESETS_DIR / kind / f"{name_or_path}{PRESET_SUFFIXES[kind]}"
    if preset.is_file():
        return preset
    flag_and_what = {"model": ("model_config", "config JSON file, model folder"), "train": ("config", "recipe file")}
    flag, what = flag_and_what[kind]
    raise FileNotFoundError(
        f"`{flag}` {str(name_or_path)!r} is neither a {what} nor a preset name; the {kind} presets are: "
        f"{', '.join(preset_names(kind))}."
    )
