"""The LayerNorm lab: experiments that check what post-sublayer LayerNorm buys (reported in docs/stability.md).

- `run_sweep`: short training runs of each norm variant over a grid of depths, warm-up lengths, log-spaced learning
  rates and seeds, on the same data. Every run is a call of the library's `train` with the recipe's fields
  overridden (model variant and depth, learning rate, warm-up, seed), so the sweep measures the real training loop.
  It writes `sweep.csv` (one row per run), `sweep.png` (final held-out loss against learning rate, mean and spread
  over seeds) and `usable_lr.md` (per depth, variant and warm-up: the best learning rate, the span of learning rates
  whose mean final loss stays within `tolerance` of the best, the runs that diverged, and the LR sensitivity of
  Wortsman et al. 2023). A finished run is kept: the same command after a crash or kill runs only what is missing.
- `batch_dependence`: whether a sequence's outputs depend on the other sequences of a padded batch (LayerNorm
  against BatchNorm).

Variants are named `<norm_position>-<norm_type>` (`post-layernorm` is the architecture, `pre-rmsnorm`, ...), or
`none` (no norms in the blocks); post-LN variants may add the residual stabilisers, `-deepnorm` (DeepNorm's
constants for the run's depth), `-b2t` (the bottom-to-top connection) or `-deepnorm-b2t`.
"""

import contextlib
import copy
import csv
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from itertools import groupby, islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .checkpointing import list_checkpoints
from .cli import OnResume, recipe_field
from .configuration_albertagpt import NORM_POSITIONS, NORM_TYPES, deepnorm_settings
from .data import TextSource, load_text_splits, pack_into_blocks
from .modeling_albertagpt import AlbertAGPTForCausalLM
from .tokenizer import TokenizerRecipe, train_tokenizer_from_source
from .training import METRICS_FILE, TrainingRecipe, read_metrics, read_model_config, train

DEFAULT_VARIANTS = [
    "post-layernorm",
    "post-layernorm-deepnorm",
    "post-layernorm-b2t",
    "post-layernorm-deepnorm-b2t",
    "pre-layernorm",
    "none",
    "post-batchnorm",
]
STABILISER_SUFFIXES = ("", "-deepnorm", "-b2t", "-deepnorm-b2t")
RUN_RESULT_FILE = "run_result.json"  # a finished run's result and recipe, in its folder


def variant_config(variant: str, num_hidden_layers: int | None = None) -> dict[str, object]:
    """The config fields of a variant name: `post-layernorm-b2t` -> `{"norm_position": "post", "norm_type":
    "layernorm", "b2t_connection": True}`. `-deepnorm` needs the depth, `num_hidden_layers` applications."""
    if variant == "none":
        return {"norm_position": "none"}
    suffix = next((s for s in reversed(STABILISER_SUFFIXES) if s and variant.endswith(s)), "")
    position, _, norm_type = variant.removesuffix(suffix).partition("-")
    if (
        position not in NORM_POSITIONS
        or position == "none"
        or norm_type not in NORM_TYPES
        or (suffix and position != "post")
    ):
        choices = [f"{p}-{t}" for p in NORM_POSITIONS if p != "none" for t in NORM_TYPES] + ["none"]
        raise ValueError(
            f"Unknown variant {variant!r}; choose from {choices}; post-LN ones may end in -deepnorm, -b2t or "
            "-deepnorm-b2t."
        )
    config: dict[str, object] = {"norm_position": position, "norm_type": norm_type}
    if "deepnorm" in suffix:
        if num_hidden_layers is None:
            raise ValueError(f"Variant {variant!r} sets DeepNorm's constants, which depend on `num_hidden_layers`.")
        config.update(deepnorm_settings(num_hidden_layers))
    if "b2t" in suffix:
        config["b2t_connection"] = True
    return config


# ------------------------------------------------------------------------------------------- the sweep


@dataclass
class SweepRecipe(TrainingRecipe):
    """A training recipe (every run uses it) plus the grid; `output_dir` holds the sweep's runs and results."""

    # The grid takes effect: it decides which runs the sweep trains. Each run gets a plain `TrainingRecipe`.
    variants: list[str] = recipe_field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        on_resume=OnResume.TAKES_EFFECT,
        help="Norm variants: post-layernorm (the architecture), post-layernorm-b2t, pre-rmsnorm, none.",
    )
    depths: list[int] = recipe_field(
        default_factory=list,
        on_resume=OnResume.TAKES_EFFECT,
        help="Layer applications (num_hidden_layers) to sweep; empty: the model config's.",
    )
    warmups: list[int] = recipe_field(
        default_factory=list,
        on_resume=OnResume.TAKES_EFFECT,
        help="Warm-up lengths (steps) to sweep; empty: the recipe's warmup_steps.",
    )
    seeds: list[int] = recipe_field(
        default_factory=list, on_resume=OnResume.TAKES_EFFECT, help="Seeds of every cell; empty: the recipe's seed."
    )
    min_learning_rate: float = recipe_field(
        3e-4, on_resume=OnResume.TAKES_EFFECT, help="Lowest peak learning rate of the grid."
    )
    max_learning_rate: float = recipe_field(
        1e-1, on_resume=OnResume.TAKES_EFFECT, help="Highest peak learning rate of the grid."
    )
    learning_rate_points: int = recipe_field(
        6, on_resume=OnResume.TAKES_EFFECT, help="Log-spaced learning rates, both ends included."
    )
    tolerance: float = recipe_field(
        0.1, on_resume=OnResume.REPORTING, help="Usable: mean final loss within this fraction of the best."
    )
    processes: int = recipe_field(
        0, on_resume=OnResume.REPORTING, help="Runs in parallel, one thread each (0: one per CPU core)."
    )
    include_csv: list[str] = recipe_field(
        default_factory=list,
        on_resume=OnResume.REPORTING,
        help="sweep.csv files of earlier sweeps (say, another depth) whose runs join this one's CSV, plot and "
        "tables; a run this sweep also has is taken from this sweep.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.variants:
            raise ValueError("`variants` is empty: name at least one, e.g. post-layernorm.")
        for variant in self.variants:
            variant_config(variant, num_hidden_layers=1)
        if not 0 < self.min_learning_rate <= self.max_learning_rate < math.inf:
            raise ValueError(
                f"Need 0 < `min_learning_rate` <= `max_learning_rate` < inf, got {self.min_learning_rate} and "
                f"{self.max_learning_rate}."
            )
        if self.learning_rate_points < 1:
            raise ValueError(f"`learning_rate_points` must be at least 1, got {self.learning_rate_points}.")
        if self.learning_rate_points == 1 and self.min_learning_rate != self.max_learning_rate:
            raise ValueError(
                "One learning-rate point cannot include both ends: set `min_learning_rate` = `max_learning_rate` "
                f"(got {self.min_learning_rate} and {self.max_learning_rate}) or use more `learning_rate_points`."
            )
        # Every grid point is one run folder: repeats would share one.
        if len(set(self.learning_rates())) < self.learning_rate_points:
            raise ValueError(
                f"The learning-rate grid {self.learning_rates()} repeats values at 3 significant digits: widen it or "
                "use fewer `learning_rate_points`."
            )
        for name in ("variants", "depths", "warmups", "seeds"):
            values = getattr(self, name)
            if len(set(values)) < len(values):
                raise ValueError(f"`{name}` lists a value twice: {values}.")
        if any(depth <= 0 for depth in self.depths):
            raise ValueError(f"`depths` must be positive numbers of layer applications, got {self.depths}.")
        if any(warmup < 0 for warmup in self.warmups):
            raise ValueError(f"`warmups` must not be negative, got {self.warmups}.")
        if not 0 < self.tolerance < math.inf:
            raise ValueError(f"`tolerance` must be a positive finite fraction, got {self.tolerance}.")
        if self.processes < 0:
            raise ValueError(f"`processes` must not be negative, got {self.processes}.")

    def learning_rates(self) -> list[float]:
        grid = np.geomspace(self.min_learning_rate, self.max_learning_rate, self.learning_rate_points)
        return [float(f"{value:.3g}") for value in grid]

    def warmup_grid(self) -> list[int]:
        return self.warmups or [self.warmup_steps]

    def seed_grid(self) -> list[int]:
        return self.seeds or [self.seed]

    def depth_grid(self) -> list[int]:
        return self.depths or [read_model_config(self.model_config).num_hidden_layers]


@dataclass
class SweepRun:
    variant: str
    num_hidden_layers: int
    learning_rate: float
    warmup_steps: int
    seed: int
    initial_eval_loss: float
    final_eval_loss: float  # held-out, after the last step; NaN when training stopped on a non-finite loss
    final_train_loss: float  # final model's loss on the first training blocks (as many as evaluated held-out)
    diverged: bool  # stopped on a non-finite loss, or ended no better than it started
    grad_ratio: float  # first over last application's residual gradient at the last diagnostics step (NaN: none)
    seconds: float


@dataclass
class UsableRange:
    """One (depth, variant, warm-up) of the sweep; losses are means over seeds, spreads their standard deviation."""

    num_hidden_layers: int
    variant: str
    warmup_steps: int
    seeds: int
    best_learning_rate: float | None  # None when every learning rate diverged
    best_loss: float | None
    best_loss_std: float | None
    low: float | None  # the contiguous span of grid learning rates around the best one whose mean loss is within
    high: float | None  # `tolerance` of the best
    diverged: list[float]  # learning rates where at least one seed diverged
    generalization_gap: float | None  # held-out minus training loss at the best learning rate
    lr_sensitivity: float  # Wortsman et al.: mean over the grid of min(loss, initial loss) - best loss, seed mean
    lr_sensitivity_std: float

    @property
    def decades(self) -> float:
        return 0.0 if self.low is None else math.log10(self.high / self.low)


def run_sweep(recipe: SweepRecipe) -> tuple[list[SweepRun], list[UsableRange]]:
    """Trains every (depth, variant, warm-up, learning rate, seed) on the same data; writes the CSV, plot and
    table. Runs whose folder holds a finished result of the same recipe are read back instead of trained again."""
    output_dir = Path(recipe.output_dir)
    if (output_dir / METRICS_FILE).is_file():
        raise ValueError(
            f"`output_dir` {str(output_dir)!r} holds a training run; give the sweep a folder of its own "
            "(`--output_dir`), e.g. the `lr_sweep` recipe's runs/lr_sweep."
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = recipe.tokenizer or str(shared_tokenizer(recipe, output_dir / "tokenizer"))
    base = {item.name: getattr(recipe, item.name) for item in fields(TrainingRecipe)}
    base.update(tokenizer=tokenizer, report_to=["none"], resume_from_checkpoint=None)
    done, to_run, included = {}, [], {}
    for depth in recipe.depth_grid():
        for variant in recipe.variants:
            config = read_model_config(recipe.model_config)
            config.num_hidden_layers = depth
            for name, value in variant_config(variant, depth).items():
                setattr(config, name, value)
            config.validate_architecture()  # a depth the groups do not divide is named before any run
            config_path = output_dir / "configs" / f"L{depth}_{variant}.json"
            config_path.parent.mkdir(exist_ok=True)
            config.to_json_file(config_path)
            for warmup_steps in recipe.warmup_grid():
                for learning_rate in recipe.learning_rates():
                    for seed in recipe.seed_grid():
                        run_dir = (
                            output_dir
                            / "runs"
                            / f"L{depth}_{variant}_lr{learning_rate:g}_warmup{warmup_steps}_seed{seed}"
                        )
                        overrides = dict(output_dir=str(run_dir), model_config=str(config_path), seed=seed)
                        overrides.update(learning_rate=learning_rate, warmup_steps=warmup_steps)
                        run_recipe = TrainingRecipe(**{**base, **overrides})
                        key = len(done) + len(to_run)
                        if (finished := finished_run(run_dir, run_recipe)) is not None:
                            done[key] = finished
                        else:
                            shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts afresh
                            to_run.append((key, variant, depth, run_recipe))

    for path in recipe.include_csv:  # read before training, so that a missing file is named at once
        included.update((run_key(run), run) for run in read_csv(path))  # a run in two files counts once
    print(
        f"Training {len(to_run)} runs ({len(done)} finished earlier are kept); each run writes its log to "
        f"{output_dir / 'runs'}/<run>/train.log",
        flush=True,
    )
    trained = map_in_processes(run_one, [task[1:] for task in to_run], recipe.processes)
    done.update(zip([key for key, *_ in to_run], trained, strict=True))
    runs = [done[key] for key in sorted(done)]
    grid_points = {run_key(run) for run in runs}
    runs = [run for key, run in included.items() if key not in grid_points] + runs

    ranges = usable_lr_ranges(runs, recipe.tolerance)
    write_csv(runs, output_dir / "sweep.csv")
    plot_sweep(runs, output_dir / "sweep.png")
    (output_dir / "usable_lr.md").write_text(format_sweep_report(runs, recipe.tolerance))
    return runs, ranges


def shared_tokenizer(recipe: TrainingRecipe, folder: Path) -> Path:
    """One tokenizer for every run of the sweep, trained on the training split of the recipe's text (once: a
    resumed sweep reuses it, so that its finished runs stay comparable with the new ones)."""
    if not (folder / "tokenizer.json").is_file():
        source = {item.name: getattr(recipe, item.name) for item in fields(TextSource)}
        train_tokenizer_from_source(TokenizerRecipe(**source, output_dir=str(folder), vocab_size=recipe.vocab_size))
    return folder


def map_in_processes(function: Callable, tasks: list[tuple], processes: int = 0) -> list:
    """`[function(*task) for task in tasks]`, in `processes` worker processes (0: one per CPU core)."""
    processes = min(processes or os.cpu_count() or 1, max(len(tasks), 1))
    if processes == 1 or not tasks:
        return [function(*task) for task in tasks]
    # Spawned workers with one thread each: parallel runs do not compete for cores or share torch's state.
    with ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        return list(pool.map(function, *zip(*tasks, strict=True)))


def recipe_record(recipe: TrainingRecipe) -> dict:
    return json.loads(json.dumps(asdict(recipe)))


def save_run_result(run_dir: Path, recipe: TrainingRecipe, result: dict) -> None:
    """What a finished run found, next to the recipe it ran (`saved_run_result` reads it back)."""
    (run_dir / RUN_RESULT_FILE).write_text(json.dumps({"result": result, "recipe": recipe_record(recipe)}))


def saved_run_result(run_dir: Path, recipe: TrainingRecipe) -> dict | None:
    """The result a finished run left in `run_dir`, if it ran this very recipe."""
    path = run_dir / RUN_RESULT_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record["result"] if record["recipe"] == recipe_record(recipe) else None


def finished_run(run_dir: Path, recipe: TrainingRecipe) -> SweepRun | None:
    result = saved_run_result(run_dir, recipe)
    return None if result is None else SweepRun(**result)


def run_one(variant: str, num_hidden_layers: int, recipe: TrainingRecipe) -> SweepRun:
    """One training run of the sweep; its console output goes to `train.log` in its folder, its checkpoints are
    removed afterwards (the final model, `metrics.jsonl` and the result in `run_result.json` stay)."""
    # A run stalled on the post-LN plateau drives values into subnormal floats, which a CPU computes tens of times
    # slower (8 s instead of 0.2 s a step at 24 applications); flushed to zero they change no loss that matters.
    run_dir = Path(recipe.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    final_train = math.nan
    torch.set_flush_denormal(True)
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            result = train(recipe)
            final_train = training_blocks_loss(recipe, result.model, result.tokenizer)
        except FloatingPointError as error:  # the loop stops before a non-finite loss updates the weights
            print(error)
        finally:
            torch.set_flush_denormal(False)  # torch's default, for whatever else runs in this process
    seconds = time.perf_counter() - start
    for checkpoint in list_checkpoints(run_dir):
        shutil.rmtree(checkpoint)

    metrics = read_metrics(run_dir / METRICS_FILE)
    eval_losses = [row["eval_loss"] for row in metrics if "eval_loss" in row]
    finished = any(row["step"] == recipe.max_steps and "eval_loss" in row for row in metrics)
    initial = eval_losses[0]
    final = eval_losses[-1] if finished else math.nan
    diverged = not math.isfinite(final) or final >= initial
    try:
        grad_ratio = depth_profile(run_dir / METRICS_FILE).grad_ratio
    except ValueError:  # no diagnostics recorded
        grad_ratio = math.nan
    run = SweepRun(
        variant,
        num_hidden_layers,
        recipe.learning_rate,
        recipe.warmup_steps,
        recipe.seed,
        initial,
        final,
        final_train,
        diverged,
        grad_ratio,
        seconds,
    )
    save_run_result(run_dir, recipe, asdict(run))
    return run


@torch.no_grad()
def training_blocks_loss(
    recipe: TrainingRecipe, model: AlbertAGPTForCausalLM, tokenizer: PreTrainedTokenizerBase
) -> float:
    """Mean loss of `model` on the first training blocks, as many as the held-out evaluation reads: with the
    held-out loss of the same weights, the generalization gap (the mean training loss of the last logging
    interval would lag behind the final weights)."""
    splits = load_text_splits(recipe)
    train_blocks, held_out_blocks = (
        pack_into_blocks(splits[split], tokenizer, recipe.block_size, recipe.text_column)
        for split in ("train", "validation")
    )
    count = sum(1 for _ in held_out_blocks)  # what the evaluation reads without `max_eval_batches`
    if recipe.max_eval_batches is not None:
        count = min(count, recipe.max_eval_batches * recipe.per_device_eval_batch_size)
    ids = torch.tensor([row["input_ids"] for row in islice(train_blocks, count)], device=model.device)
    model.eval()
    batches = ids.split(recipe.per_device_eval_batch_size)
    return sum(model(input_ids=batch, labels=batch).loss.item() * len(batch) for batch in batches) / len(ids)


def run_key(run: SweepRun) -> tuple[int, str, int, float, int]:
    return run.num_hidden_layers, run.variant, run.warmup_steps, run.learning_rate, run.seed


def cell_key(run: SweepRun) -> tuple[int, str, int]:
    return run.num_hidden_layers, run.variant, run.warmup_steps


def lr_sensitivity(runs: list[SweepRun]) -> float:
    """Wortsman et al. 2023's LR sensitivity of one seed's learning-rate grid: the mean over the grid of
    `min(loss, initial loss) - best loss`, a diverged run counting as its initial loss. 0: every learning rate as
    good as the best one; the initial-minus-best loss: only the best one learns at all."""
    best = min((run.final_eval_loss for run in runs if not run.diverged), default=math.nan)
    if math.isnan(best):
        return math.nan
    capped = [
        run.initial_eval_loss if run.diverged else min(run.final_eval_loss, run.initial_eval_loss) for run in runs
    ]
    return statistics.fmean(capped) - best


def mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def usable_lr_ranges(runs: list[SweepRun], tolerance: float = 0.1, across_variants: bool = False) -> list[UsableRange]:
    """Per (depth, variant, warm-up): the learning rate with the best final loss averaged over seeds, and the
    contiguous span of grid learning rates around it whose mean loss stays within `tolerance` (a fraction) of that
    best one; a learning rate where any seed diverged is excluded. Also the LR sensitivity, mean and spread over
    seeds.

    With `across_variants` the limit comes from the best mean of all variants at the same depth instead: a variant
    that trains stably but never gets near the others (say, stuck on a plateau at every learning rate) then has no
    usable range.
    """
    order = {key: index for index, key in enumerate(dict.fromkeys(cell_key(run) for run in runs))}
    runs = sorted(runs, key=lambda run: (order[cell_key(run)], run.learning_rate, run.seed))
    summaries = []
    for key, cell_runs in groupby(runs, key=cell_key):
        by_rate = [list(rate_runs) for _, rate_runs in groupby(cell_runs, key=lambda run: run.learning_rate)]
        summaries.append((key, by_rate))

    def healthy_mean(rate_runs: list[SweepRun]) -> float | None:
        if any(run.diverged for run in rate_runs):
            return None
        return statistics.fmean(run.final_eval_loss for run in rate_runs)

    best_of_depth: dict[int, float] = {}
    for (depth, _, _), by_rate in summaries:
        means = [mean for rate_runs in by_rate if (mean := healthy_mean(rate_runs)) is not None]
        if means:
            best_of_depth[depth] = min(best_of_depth.get(depth, math.inf), min(means))

    ranges = []
    for (depth, variant, warmup_steps), by_rate in summaries:
        means = [healthy_mean(rate_runs) for rate_runs in by_rate]
        rates = [rate_runs[0].learning_rate for rate_runs in by_rate]
        seeds = sorted({run.seed for rate_runs in by_rate for run in rate_runs})
        per_seed = [[run for rate_runs in by_rate for run in rate_runs if run.seed == seed] for seed in seeds]
        sensitivity, sensitivity_std = mean_and_std([lr_sensitivity(seed_runs) for seed_runs in per_seed])
        diverged = [rate for rate, mean in zip(rates, means, strict=True) if mean is None]
        healthy = [index for index, mean in enumerate(means) if mean is not None]
        common = dict(num_hidden_layers=depth, variant=variant, warmup_steps=warmup_steps, seeds=len(seeds))
        common.update(diverged=diverged, lr_sensitivity=sensitivity, lr_sensitivity_std=sensitivity_std)
        if not healthy:
            ranges.append(
                UsableRange(
                    **common,
                    best_learning_rate=None,
                    best_loss=None,
                    best_loss_std=None,
                    low=None,
                    high=None,
                    generalization_gap=None,
                )
            )
            continue
        best_index = min(healthy, key=lambda index: means[index])
        best_runs = by_rate[best_index]
        best_loss, best_std = mean_and_std([run.final_eval_loss for run in best_runs])
        gap = statistics.fmean(run.final_eval_loss - run.final_train_loss for run in best_runs)
        limit = (best_of_depth[depth] if across_variants else best_loss) * (1 + tolerance)
        usable = [mean is not None and mean <= limit for mean in means]
        low = high = best_index
        while low > 0 and usable[low - 1]:
            low -= 1
        while high < len(usable) - 1 and usable[high + 1]:
            high += 1
        span = (rates[low], rates[high]) if usable[best_index] else (None, None)
        ranges.append(
            UsableRange(
                **common,
                best_learning_rate=rates[best_index],
                best_loss=best_loss,
                best_loss_std=best_std,
                low=span[0],
                high=span[1],
                generalization_gap=gap,
            )
        )
    return ranges


def write_csv(runs: list[SweepRun], path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[item.name for item in fields(SweepRun)])
        writer.writeheader()
        writer.writerows(asdict(run) for run in runs)


def read_csv(path: str | Path) -> list[SweepRun]:
    """The runs of a `sweep.csv` (to recompute ranges or plots without training again)."""
    types = {item.name: item.type for item in fields(SweepRun)}
    with open(path, newline="") as file:
        return [
            SweepRun(
                **{name: row[name] == "True" if types[name] is bool else types[name](row[name]) for name in types}
            )
            for row in csv.DictReader(file)
        ]


def plot_sweep(runs: list[SweepRun], path: Path) -> None:
    """Final held-out loss against learning rate, mean over seeds with their spread as error bars: a row of panels
    per depth, a column per warm-up, a colour per variant; x marks learning rates where a seed diverged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    depths = sorted({run.num_hidden_layers for run in runs})
    warmups = sorted({run.warmup_steps for run in runs})
    variants = list(dict.fromkeys(run.variant for run in runs))
    colors = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2, strict=False))
    figure, axes = plt.subplots(
        len(depths), len(warmups), figsize=(4 * len(warmups) + 2, 3.2 * len(depths)), squeeze=False, sharey="row"
    )
    labelled_rows: set[int] = set()
    for row, depth in enumerate(depths):
        for column, warmup_steps in enumerate(warmups):
            panel = axes[row][column]
            if not any((r.num_hidden_layers, r.warmup_steps) == (depth, warmup_steps) for r in runs):
                panel.set_title(f"{depth} applications, warm-up {warmup_steps}: not swept", fontsize=9)
                panel.axis("off")  # a grid may sweep fewer warm-ups at one depth (merged sweeps)
                continue
            panel_drawn = panel
            for variant in variants:
                cell = [
                    r
                    for r in runs
                    if (r.num_hidden_layers, r.variant, r.warmup_steps) == (depth, variant, warmup_steps)
                ]
                rates = sorted({r.learning_rate for r in cell})
                means, spreads, failed = [], [], []
                for rate in rates:
                    at_rate = [r for r in cell if r.learning_rate == rate]
                    if any(r.diverged for r in at_rate):
                        means.append(np.nan)
                        spreads.append(np.nan)
                        failed.append(rate)
                    else:
                        mean, std = mean_and_std([r.final_eval_loss for r in at_rate])
                        means.append(mean)
                        spreads.append(std)
                panel.errorbar(
                    rates, means, yerr=spreads, marker="o", ms=3, capsize=2, color=colors[variant], label=variant
                )
                ceiling = max([r.initial_eval_loss for r in cell], default=1.0)
                panel.scatter(failed, [ceiling] * len(failed), marker="x", s=40, color=colors[variant])
            panel.set_xscale("log")
            panel.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # a narrow grid labels minor ticks
            panel.set_title(f"{depth} applications, warm-up {warmup_steps}", fontsize=9)
            panel.grid(True, which="both", alpha=0.3)
            panel.set_xlabel("peak learning rate")
            if row not in labelled_rows:  # the first panel drawn in the row: the ones left of it may be empty
                labelled_rows.add(row)
                panel.set_ylabel("final held-out loss")
                panel.tick_params(labelleft=True)
    # The variants of a panel that was drawn, placed right of the first row (whose last panel may be empty).
    handles, labels = panel_drawn.get_legend_handles_labels()
    axes[0][-1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def format_ranges(ranges: list[UsableRange], tolerance: float, across_variants: bool = False) -> str:
    """A Markdown table of the usable learning-rate ranges and LR sensitivities."""
    reference = "the best variant's" if across_variants else "the variant's best"
    lines = [
        "| depth | variant | warm-up | seeds | best LR | best loss (mean ± sd) | "
        f"usable LR (mean within {tolerance:.0%} of {reference}) | decades | diverged at LR | "
        "LR sensitivity (mean ± sd) | held-out - train at best |",
        "|---:|---|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for r in ranges:
        diverged = ", ".join(f"{lr:g}" for lr in r.diverged) or "-"
        best = (
            "- | -"
            if r.best_learning_rate is None
            else f"{r.best_learning_rate:g} | {r.best_loss:.3f} ± {r.best_loss_std:.3f}"
        )
        usable = "none" if r.low is None else f"{r.low:g} - {r.high:g}"
        gap = "-" if r.generalization_gap is None else f"{r.generalization_gap:+.3f}"
        sensitivity = "-" if math.isnan(r.lr_sensitivity) else f"{r.lr_sensitivity:.3f} ± {r.lr_sensitivity_std:.3f}"
        lines.append(
            f"| {r.num_hidden_layers} | {r.variant} | {r.warmup_steps} | {r.seeds} | {best} | {usable} | "
            f"{r.decades:.1f} | {diverged} | {sensitivity} | {gap} |"
        )
    return "\n".join(lines)


def format_sweep_report(runs: list[SweepRun], tolerance: float) -> str:
    """Both tables of `usable_lr.md`: each variant against its own best, then against the best variant's at the
    same depth."""
    return (
        f"Usable learning rates: mean final held-out loss within {tolerance:.0%} of the variant's best\n\n"
        f"{format_ranges(usable_lr_ranges(runs, tolerance), tolerance)}\n\n"
        f"Usable learning rates: mean final held-out loss within {tolerance:.0%} of the best variant's at the same "
        "depth\n\n"
        f"{format_ranges(usable_lr_ranges(runs, tolerance, across_variants=True), tolerance, across_variants=True)}\n"
    )


# ------------------------------------------------------------------------------- gradient flow through depth


@dataclass
class DepthProfile:
    """One recorded step of a `--diagnostics` run: per layer application, from the embedding side to the head."""

    step: int
    residual_grad_norm: list[float]  # ||dLoss/dh|| of the residual stream leaving each application
    output_rms: list[float]  # RMS of that residual stream

    @property
    def grad_ratio(self) -> float:
        """First over last application: below 1 the gradient shrinks on its way down to the embeddings."""
        return self.residual_grad_norm[0] / self.residual_grad_norm[-1]


def depth_profile(metrics_path: str | Path, step: int | None = None) -> DepthProfile:
    """The diagnostics of `step` (default: the last recorded one) in a run's `metrics.jsonl`."""
    rows = [row for row in read_metrics(metrics_path) if any(name.startswith("diagnostics/") for name in row)]
    if step is not None:
        rows = [row for row in rows if row["step"] == step]
    if not rows:
        raise ValueError(
            f"{str(metrics_path)!r} holds no diagnostics{'' if step is None else f' at step {step}'}: "
            "train with `--diagnostics`."
        )
    row = rows[-1]
    count = sum(1 for name in row if name.endswith("/output_rms") and "/application_" in name)
    names = [f"diagnostics/application_{i:02d}" for i in range(count)]
    return DepthProfile(
        row["step"],
        [row[f"{name}/residual_grad_norm"] for name in names],
        [row[f"{name}/output_rms"] for name in names],
    )


def plot_depth_profiles(profiles: dict[str, DepthProfile], path: Path) -> None:
    """Residual-stream gradient norm and RMS against layer application, one line per labelled profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (grads, sizes) = plt.subplots(1, 2, figsize=(10, 4))
    for label, profile in profiles.items():
        applications = range(len(profile.output_rms))
        grads.plot(applications, profile.residual_grad_norm, marker="o", label=label)
        sizes.plot(applications, profile.output_rms, marker="o", label=label)
    for axes, title in ((grads, "gradient norm of the residual stream"), (sizes, "RMS of the residual stream")):
        axes.set_yscale("log")
        axes.set_xlabel("layer application (0: next to the embeddings)")
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
    grads.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# -------------------------------------------------------------------------------- the variable-length check


@dataclass
class BatchDependence:
    """Largest changes of a sequence's logits (over its real tokens) caused by what else is in the batch."""

    alone_vs_batch: float  # the sequence alone, unpadded, against the same sequence in the mixed padded batch
    padding: float  # the mixed batch padded to its longest sequence against the same batch with extra padding
    future_tokens: float  # earlier positions, when the last token of the longest sequence changes (causality)


@torch.no_grad()
def batch_dependence(
    model: AlbertAGPTForCausalLM, sequences: list[list[int]], extra_padding: int = 5
) -> BatchDependence:
    """Evaluates `sequences` (token ids) alone and together in right-padded batches, in the model's current mode.

    The model itself is left untouched (a copy runs, so training-mode BatchNorm does not move its running
    statistics). LayerNorm works per token, so all three numbers are at float rounding level; BatchNorm in training
    mode mixes tokens of the whole batch into every token's normalization.
    """
    lengths = [len(row) for row in sequences]
    if not lengths or min(lengths) < 1 or max(lengths) < 2:
        raise ValueError(
            "`sequences` must be non-empty token lists, the longest of at least 2 tokens (its last token is changed "
            f"to test for leaks into earlier positions); got lengths {lengths}."
        )
    model = copy.deepcopy(model)
    pad = model.config.pad_token_id
    longest = max(map(len, sequences))

    def padded(rows: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([row + [pad] * (length - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])
        return ids, mask

    def logits(rows: list[list[int]], length: int) -> torch.Tensor:
        ids, mask = padded(rows, length)
        return model(input_ids=ids, attention_mask=mask).logits.float()

    batch = logits(sequences, longest)
    alone = max(
        (logits([row], len(row))[0] - batch[index, : len(row)]).abs().max().item()
        for index, row in enumerate(sequences)
    )
    more_padding = logits(sequences, longest + extra_padding)
    padding = max(
        (more_padding[index, : len(row)] - batch[index, : len(row)]).abs().max().item()
        for index, row in enumerate(sequences)
    )
    changed = [list(row) for row in sequences]
    index_longest = max(range(len(sequences)), key=lambda index: len(sequences[index]))
    changed[index_longest][-1] = 3 if changed[index_longest][-1] != 3 else 4  # another ordinary token (0-2: special)
    after_change = logits(changed, longest)
    future = max(
        (after_change[index, : len(row) - 1] - batch[index, : len(row) - 1]).abs().max().item()
        if index == index_longest
        else (after_change[index, : len(row)] - batch[index, : len(row)]).abs().max().item()
        for index, row in enumerate(sequences)
    )
    return BatchDependence(alone, padding, future)


__all__ = [
    "BatchDependence",
    "DepthProfile",
    "SweepRecipe",
    "SweepRun",
    "UsableRange",
    "batch_dependence",
    "depth_profile",
    "format_ranges",
    "format_sweep_report",
    "lr_sensitivity",
    "plot_depth_profiles",
    "plot_sweep",
    "read_csv",
    "run_sweep",
    "usable_lr_ranges",
    "variant_config",
    "write_csv",
]
