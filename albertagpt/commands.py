"""The `albertagpt` command (also `python -m albertagpt`): one subcommand per job, each taking the flags of its
`scripts/*.py` twin, which calls the same function here.

    albertagpt train --config tiny [--field value ...]
    accelerate launch [--config_file ...] -m albertagpt train --config base
    albertagpt --help
"""

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TypeVar

from . import __version__
from .benchmark import (
    QUICK_SETTINGS,
    QUICK_SHAPE,
    BenchmarkSettings,
    BenchmarkShape,
    check_output_paths,
    check_run_is_possible,
    format_scaling_tables,
    format_table,
    plot_results,
    run_benchmark,
    save_results,
)
from .cli import parse_recipe
from .convert import convert_albert
from .hub import (
    DEFAULT_MAX_SHARD_SIZE,
    NotLoggedInError,
    build_repo_folder,
    plot_loss_curve,
    push_trained_model,
    read_training_metrics,
)
from .lab import SweepRecipe, format_sweep_report, run_sweep
from .quality import QualityRecipe, format_summary, run_quality_benchmark
from .tokenizer import TokenizerRecipe, train_tokenizer_from_source
from .training import TrainingRecipe, train

Recipe = TypeVar("Recipe")
Result = TypeVar("Result")


def exit_on_bad_input(function: Callable[..., Result], *args) -> Result:
    """`function(*args)`; the errors that name bad input (a field's value, a missing file) end the process with a
    one-line error instead of a traceback."""
    try:
        return function(*args)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


def parse_recipe_or_exit(
    recipe_type: type[Recipe], argv: Sequence[str] | None, command: Callable, prog: str | None
) -> Recipe:
    """The recipe of a recipe-driven command; a bad recipe or flag ends the process with a one-line error."""
    return exit_on_bad_input(parse_recipe, recipe_type, argv, command.__doc__, prog)


def train_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Pretrain AlbertAGPT with Accelerate, from one CPU to many GPUs and nodes.

        albertagpt train --config tiny [--field value ...]
        accelerate launch [--config_file configs/accelerate/X.yaml] -m albertagpt train --config base [...]

    Every field of the recipe can be given in the YAML file (a path, or a shipped training recipe: tiny, base) and
    overridden as `--field value`; `--help` lists them. Resume after a crash with `--resume_from_checkpoint latest`.
    """

    exit_on_bad_input(train, parse_recipe_or_exit(TrainingRecipe, argv, train_main, prog))


def train_tokenizer_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Train a byte-level BPE tokenizer with `<pad>`, `<s>`, `</s>` and save it for `AutoTokenizer.from_pretrained`.

        albertagpt train-tokenizer --output_dir DIR [--train_files F ...] [--dataset_name N
            [--dataset_config_name C]] [--builtin_corpus docs|stdlib] [--text_column text] [--vocab_size 8000]

    With no files and no data set it trains on the built-in corpus (Python's documentation). Only the training
    split is read; the held-out documents stay unseen.
    """

    recipe = parse_recipe_or_exit(TokenizerRecipe, argv, train_tokenizer_main, prog)
    tokenizer = exit_on_bad_input(train_tokenizer_from_source, recipe)
    print(f"Saved a tokenizer with {len(tokenizer)} tokens to {recipe.output_dir}")


def push_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Publish a trained output folder as a Hugging Face Hub model repo (weights, tokenizer, remote code, card).

        albertagpt push --model_dir OUT --repo_id ORG/NAME [--private] [--revision BRANCH]
            [--commit_message MSG] [--dry_run DIR] [--max_shard_size 5GB]

    Uploads with the token of `hf auth login` or HF_TOKEN; --dry_run DIR only writes the repo folder to DIR.
    """

    parser = argparse.ArgumentParser(
        prog=prog, description=push_main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True, help="output_dir of a training run")
    parser.add_argument("--repo_id", required=True, help="ORG/NAME of the Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit_message", default=None, help="default names the step and held-out perplexity")
    parser.add_argument("--dry_run", metavar="DIR", default=None, help="write the repo folder to DIR; upload nothing")
    parser.add_argument(
        "--max_shard_size", default=DEFAULT_MAX_SHARD_SIZE, help="shard model.safetensors above this size (e.g. 2GB)"
    )
    args = parser.parse_args(argv)
    try:
        if args.dry_run is not None:
            folder = build_repo_folder(args.model_dir, args.repo_id, args.dry_run, args.max_shard_size)
            print(f"Wrote the repo folder for {args.repo_id} to {folder}; nothing was uploaded.")
        else:
            commit = push_trained_model(
                args.model_dir,
                args.repo_id,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
                max_shard_size=args.max_shard_size,
            )
            print(f"Uploaded {args.model_dir} to {commit.commit_url}")
    except (ValueError, NotLoggedInError) as error:
        parser.error(str(error))


def convert_albert_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Convert an ALBERT checkpoint (a folder or Hub id) and its tokenizer into an AlbertAGPT causal-LM folder."""

    parser = argparse.ArgumentParser(prog=prog, description=convert_albert_main.__doc__)
    parser.add_argument("--albert", required=True, help="ALBERT folder or Hub id, e.g. albert/albert-base-v2")
    parser.add_argument("--output_dir", required=True, help="where to save the AlbertAGPT model and tokenizer")
    args = parser.parse_args(argv)
    # A path is not a Hub id: without this, a mistyped folder reaches the Hub and fails with its error.
    if args.albert.startswith(("/", "./", "../", "~")) and not Path(args.albert).expanduser().is_dir():
        parser.error(f"--albert {args.albert!r} is no folder (a Hub id reads ORG/NAME)")
    print(f"Saved AlbertAGPT converted from {args.albert} to {convert_albert(args.albert, args.output_dir)}")


def sweep_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """The LayerNorm lab's sweep of norm variants over depths, warm-ups, learning rates and seeds.

    Short training runs of each norm variant over depths, warm-up lengths, a log-spaced grid of learning rates and
    seeds, on the same data (docs/stability.md).

        albertagpt sweep --config lr_sweep [--field value ...]

    Every field of the training recipe applies to every run; the sweep adds `--variants`, `--min_learning_rate`,
    `--max_learning_rate`, `--learning_rate_points`, `--depths`, `--warmups`, `--seeds`, `--tolerance` and
    `--processes`. It writes `sweep.csv`, `sweep.png` and `usable_lr.md` to `output_dir`, one folder per run under
    `output_dir/runs`; the same command after a kill trains only the runs that are missing.
    """

    recipe = parse_recipe_or_exit(SweepRecipe, argv, sweep_main, prog)
    runs, _ = exit_on_bad_input(run_sweep, recipe)
    print(format_sweep_report(runs, recipe.tolerance))
    print(f"Wrote sweep.csv, sweep.png and usable_lr.md to {recipe.output_dir}")


def quality_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Quality benchmark: AlbertAGPT against GPT-2 at equal compute and at equal parameter count.

    AlbertAGPT and GPT-2 (`GPT2LMHeadModel`) at equal compute per token and at equal parameter count, trained through
    the same loop on the same data, tokenizer and number of tokens, each at its own best learning rate of a small
    grid, over seeds (docs/quality.md).

        albertagpt quality --config quality [--field value ...]

    Every field of the training recipe applies to every run (`model_config` is AlbertAGPT's); the benchmark adds
    `--learning_rates`, `--seeds`, `--results_file`, `--plot_file` and `--processes`.
    """

    recipe = parse_recipe_or_exit(QualityRecipe, argv, quality_main, prog)
    runs = exit_on_bad_input(run_quality_benchmark, recipe)
    print(format_summary(runs))
    print(f"Wrote {recipe.results_file} and {recipe.plot_file}")


def benchmark_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Speed benchmark: AlbertAGPT against transformers' GPT-2 at the same shape (docs/benchmarks.md).

    albertagpt benchmark            # hidden 512, 8 layers, vocab 8192, seq 256, batch 8; CPU, fp32
    albertagpt benchmark --quick    # every measurement on a tiny shape, in seconds
    albertagpt benchmark --device cuda --dtype bfloat16 --compile --hidden_size 768 --num_layers 12 \\
        --num_heads 12 --intermediate_size 3072 --vocab_size 50304 --seq_len 1024
"""

    parser = argparse.ArgumentParser(
        prog=prog, description=benchmark_main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (training, static cache)")
    parser.add_argument("--quick", action="store_true", help="tiny shape and few steps (seconds; for smoke tests)")
    for field in fields(BenchmarkShape):
        parser.add_argument(
            f"--{field.name}",
            type=int,
            help=f"default {field.default} ({getattr(QUICK_SHAPE, field.name)} with --quick)",
        )
    parser.add_argument("--train_steps", type=int, help="timed training steps per model")
    parser.add_argument(
        "--generate_repeats", type=int, help="timed generate() calls per model and batch size (5; 2 with --quick)"
    )
    parser.add_argument(
        "--output", help="default benchmarks/results.json (benchmarks/results_quick.json with --quick)"
    )
    parser.add_argument("--plot", help="default docs/benchmark_<device>.png; none with --quick unless given")
    args = parser.parse_args(argv)

    shape = QUICK_SHAPE if args.quick else BenchmarkShape()
    shape_overrides = {
        field.name: getattr(args, field.name)
        for field in fields(BenchmarkShape)
        if getattr(args, field.name) is not None
    }
    settings = QUICK_SETTINGS if args.quick else BenchmarkSettings()
    settings_overrides = {"device": args.device, "dtype": args.dtype, "compile": args.compile}
    for name in ("train_steps", "generate_repeats"):
        if getattr(args, name) is not None:
            settings_overrides[name] = getattr(args, name)
    output = args.output or ("benchmarks/results_quick.json" if args.quick else "benchmarks/results.json")
    plot = args.plot or (None if args.quick else f"docs/benchmark_{args.device}.png")
    try:
        shape = BenchmarkShape(**{**asdict(shape), **shape_overrides})
        settings = BenchmarkSettings(**{**asdict(settings), **settings_overrides})
        check_run_is_possible(shape, settings)
        check_output_paths(output, plot)
    except ValueError as error:
        parser.error(str(error))

    results = run_benchmark(shape, settings)
    print(format_table(results))
    print()
    print(format_scaling_tables(results))
    print(f"results written to {save_results(results, output)}")
    if plot:
        print(f"plot written to {plot_results(results, plot)}")


def plot_main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Draw the loss curve of a training run (training loss per logged step, held-out loss per evaluation).

    albertagpt plot OUTPUT_DIR/metrics.jsonl loss_curve.png
    """

    parser = argparse.ArgumentParser(
        prog=prog, description=plot_main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("metrics", type=Path, help="metrics.jsonl written by a training run")
    parser.add_argument("output", type=Path, help="PNG file to write")
    args = parser.parse_args(argv)
    if not args.metrics.is_file():
        parser.error(f"{args.metrics} does not exist")
    try:
        metrics = read_training_metrics(args.metrics)
    except ValueError as error:
        parser.error(str(error))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plot_loss_curve(metrics, args.output)
    print(
        f"Wrote {args.output}: {len(metrics.train_steps)} training points, held-out perplexity "
        f"{metrics.perplexities[0]:.2f} at step {metrics.eval_steps[0]} -> {metrics.final_perplexity:.2f} "
        f"at step {metrics.eval_steps[-1]}"
    )


# Each command: `function(argv, prog)`, its docstring's first line the summary `albertagpt --help` shows.
COMMANDS: dict[str, Callable[[Sequence[str] | None, str | None], None]] = {
    "train": train_main,
    "train-tokenizer": train_tokenizer_main,
    "push": push_main,
    "convert-albert": convert_albert_main,
    "sweep": sweep_main,
    "quality": quality_main,
    "benchmark": benchmark_main,
    "plot": plot_main,
}


def main(argv: Sequence[str] | None = None) -> None:
    """`albertagpt COMMAND [flags]`: the command's own parser reads the flags (`albertagpt train --help`)."""
    parser = argparse.ArgumentParser(
        prog="albertagpt",
        description="AlbertAGPT: pretrain, evaluate and publish. `albertagpt COMMAND --help` lists a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"albertagpt {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        # No help of its own: the command's parser reads every flag after the name, `--help` included.
        subcommands.add_parser(name, help=command.__doc__.splitlines()[0], add_help=False)
    args, rest = parser.parse_known_args(argv)
    COMMANDS[args.command](rest, f"albertagpt {args.command}")
