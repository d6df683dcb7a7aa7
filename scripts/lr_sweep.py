"""Learning-rate sweep of the LayerNorm lab: short training runs of each norm variant over a log-spaced grid of
learning rates, with and without warm-up, on the same data and seed (docs/stability.md).

    python scripts/lr_sweep.py --config configs/train/lr_sweep.yaml [--field value ...]

Every field of the training recipe applies to every run; the sweep adds `--variants`, `--min_learning_rate`,
`--max_learning_rate`, `--learning_rate_points`, `--compare_warmup`, `--tolerance` and `--processes`. It writes
`sweep.csv`, `sweep.png` and `usable_lr.md` to `output_dir`, one folder per run under `output_dir/runs`.
"""

import sys

from albertagpt.cli import parse_recipe
from albertagpt.lab import SweepRecipe, format_sweep_report, run_sweep


def main(argv: list[str] | None = None) -> None:
    try:
        recipe = parse_recipe(SweepRecipe, argv, description=__doc__)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    runs, _ = run_sweep(recipe)
    print(format_sweep_report(runs, recipe.tolerance))
    print(f"Wrote sweep.csv, sweep.png and usable_lr.md to {recipe.output_dir}")


if __name__ == "__main__":
    main()
