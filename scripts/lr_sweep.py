"""The LayerNorm lab's sweep: short training runs of each norm variant over depths, warm-up lengths, a log-spaced
grid of learning rates and seeds, on the same data (docs/stability.md).

    python scripts/lr_sweep.py --config configs/train/lr_sweep.yaml [--field value ...]

Every field of the training recipe applies to every run; the sweep adds `--variants`, `--min_learning_rate`,
`--max_learning_rate`, `--learning_rate_points`, `--depths`, `--warmups`, `--seeds`, `--tolerance` and
`--processes`. It writes `sweep.csv`, `sweep.png` and `usable_lr.md` to `output_dir`, one folder per run under
`output_dir/runs`; the same command after a kill trains only the runs that are missing.
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
