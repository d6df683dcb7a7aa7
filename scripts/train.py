"""Pretrain AlbertAGPT with Accelerate, from one CPU to many GPUs and nodes.

    python scripts/train.py --config configs/train/tiny.yaml [--field value ...]
    accelerate launch [--config_file configs/accelerate/X.yaml] scripts/train.py --config ... [--field value ...]

Every field of the recipe can be given in the YAML file and overridden as `--field value`; `--help` lists them.
Resume after a crash with `--resume_from_checkpoint latest`.
"""

import sys

from albertagpt.cli import parse_recipe
from albertagpt.training import TrainingRecipe, train


def main(argv: list[str] | None = None) -> None:
    try:
        recipe = parse_recipe(TrainingRecipe, argv, description=__doc__)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    train(recipe)


if __name__ == "__main__":
    main()
