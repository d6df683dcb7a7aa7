"""Quality benchmark: AlbertAGPT against GPT-2 (`GPT2LMHeadModel`) at equal compute per token and at equal
parameter count, trained through the same loop on the same data, tokenizer and number of tokens, each at its own
best learning rate of a small grid, over seeds (docs/quality.md).

    python scripts/quality_benchmark.py --config configs/train/quality.yaml [--field value ...]

Every field of the training recipe applies to every run (`model_config` is AlbertAGPT's); the benchmark adds
`--learning_rates`, `--seeds`, `--results_file`, `--plot_file` and `--processes`.
"""

import sys

from albertagpt.cli import parse_recipe
from albertagpt.quality import QualityRecipe, format_summary, run_quality_benchmark


def main(argv: list[str] | None = None) -> None:
    try:
        recipe = parse_recipe(QualityRecipe, argv, description=__doc__)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    runs = run_quality_benchmark(recipe)
    print(format_summary(runs))
    print(f"Wrote {recipe.results_file} and {recipe.plot_file}")


if __name__ == "__main__":
    main()
