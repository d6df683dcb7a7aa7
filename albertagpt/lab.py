"""The LayerNorm lab: experiments that check what post-sublayer LayerNorm buys (reported in docs/stability.md).

- `run_sweep`: short training runs of each norm variant over a log-spaced grid of learning rates, with and
  without warm-up, on the same data and seed. Every run is a call of the library's `train` with the recipe's
  fields overridden (model variant, learning rate, warm-up), so the sweep measures the real training loop.
  It writes `sweep.csv`, `sweep.png` (final held-out loss against learning rate) and `usable_lr.md` (the span of
  learning rates whose final loss stays within `tolerance` of the best run, and the runs that diverged).
- `batch_dependence`: whether a sequence's outputs depend on the other sequences of a padded batch (LayerNorm
  against BatchNorm).

Variants are named `<norm_position>-<norm_type>` (`post-layernorm` is the architecture, `pre-rmsnorm`, ...), or
`none` (no norms in the blocks).
"""

import contextlib
import copy
import csv
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from itertools import groupby, islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .configuration_albertagpt import NORM_POSITIONS, NORM_TYPES
from .data import TextSource, load_text_splits, pack_into_blocks
from .modeling_albertagpt import AlbertAGPTForCausalLM
from .tokenizer import TokenizerRecipe, train_tokenizer_from_source
from .training import METRICS_FILE, TrainingRecipe, list_checkpoints, read_metrics, read_model_config, train

DEFAULT_VARIANTS = ["post-layernorm", "pre-layernorm", "none"]


def variant_config(variant: str) -> dict[str, str]:
    """The config fields of a variant name: `post-layernorm` -> `{"norm_position": "post", "norm_type": ...}`."""
    if variant == "none":
        return {"norm_position": "none"}
    position, _, norm_type = variant.partition("-")
    if position not in NORM_POSITIONS or position == "none" or norm_type not in NORM_TYPES:
        choices = [f"{p}-{t}" for p in NORM_POSITIONS if p != "none" for t in NORM_TYPES] + ["none"]
        raise ValueError(f"Unknown variant {variant!r}; choose from {choices}.")
    return {"norm_position": position, "norm_type": norm_type}


# ------------------------------------------------------------------------------------------- the sweep


@dataclass
class SweepRecipe(TrainingRecipe):
    """A training recipe (every run uses it) plus the grid; `output_dir` holds the sweep's runs and results."""

    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        metadata={"help": "Norm variants: post-layernorm (the architecture), pre-rmsnorm, ..., or none."},
    )
    min_learning_rate: float = 3e-4
    max_learning_rate: float = 1e-1
    learning_rate_points: int = field(default=6, metadata={"help": "Log-spaced learning rates, both ends included."})
    compare_warmup: bool = field(
        default=True, metadata={"help": "Run every learning rate with `warmup_steps` of warm-up and with none."}
    )
    tolerance: float = field(default=0.1, metadata={"help": "Usable: final loss within this fraction of the best."})
    processes: int = field(default=0, metadata={"help": "Runs in parallel, one thread each (0: one per CPU core)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.variants:
            raise ValueError("`variants` is empty: name at least one, e.g. post-layernorm.")
        for variant in self.variants:
            variant_config(variant)
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
        # Every (variant, learning rate) pair is one run folder: repeats would share one.
        if len(set(self.learning_rates())) < self.learning_rate_points:
            raise ValueError(
                f"The learning-rate grid {self.learning_rates()} repeats values at 3 significant digits: widen it or "
                "use fewer `learning_rate_points`."
            )
        if len(set(self.variants)) < len(self.variants):
            raise ValueError(f"`variants` lists a variant twice: {self.variants}.")
        if not 0 < self.tolerance < math.inf:
            raise ValueError(f"`tolerance` must be a positive finite fraction, got {self.tolerance}.")
        if self.processes < 0:
            raise ValueError(f"`processes` must not be negative, got {self.processes}.")

    def learning_rates(self) -> list[float]:
        grid = np.geomspace(self.min_learning_rate, self.max_learning_rate, self.learning_rate_points)
        return [float(f"{value:.3g}") for value in grid]

    def warmups(self) -> list[int]:
        return [self.warmup_steps, 0] if self.compare_warmup and self.warmup_steps > 0 else [self.warmup_steps]


@dataclass
class SweepRun:
    variant: str
    learning_rate: float
    warmup_steps: int
    initial_eval_loss: float
    final_eval_loss: float  # held-out, after the last step; NaN when training stopped on a non-finite loss
    final_train_loss: float  # final model's loss on the first training blocks (as many as evaluated held-out)
    diverged: bool  # stopped on a non-finite loss, or ended no better than it started
    seconds: float


@dataclass
class UsableRange:
    variant: str
    warmup_steps: int
    best_learning_rate: float | None  # None when every run diverged
    best_loss: float | None
    low: float | None  # the contiguous span of grid learning rates around the best one whose loss is within
    high: float | None  # `tolerance` of the best
    diverged: list[float]  # learning rates whose run diverged
    generalization_gap: float | None  # held-out minus training loss at the best learning rate

    @property
    def decades(self) -> float:
        return 0.0 if self.low is None else math.log10(self.high / self.low)


def run_sweep(recipe: SweepRecipe) -> tuple[list[SweepRun], list[UsableRange]]:
    """Trains every (variant, learning rate, warm-up) on the same data and seed; writes the CSV, plot and table."""
    output_dir = Path(recipe.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = recipe.tokenizer or str(train_shared_tokenizer(recipe, output_dir / "tokenizer"))
    base = {item.name: getattr(recipe, item.name) for item in fields(TrainingRecipe)}
    base.update(tokenizer=tokenizer, report_to=["none"], resume_from_checkpoint=None)
    run_recipes = []
    for variant in recipe.variants:
        config = read_model_config(recipe.model_config)
        for name, value in variant_config(variant).items():
            setattr(config, name, value)
        config_path = output_dir / "configs" / f"{variant}.json"
        config_path.parent.mkdir(exist_ok=True)
        config.to_json_file(config_path)
        for warmup_steps in recipe.warmups():
            for learning_rate in recipe.learning_rates():
                run_dir = output_dir / "runs" / f"{variant}_lr{learning_rate:g}_warmup{warmup_steps}"
                shutil.rmtree(run_dir, ignore_errors=True)  # a sweep always starts its runs afresh
                overrides = dict(output_dir=str(run_dir), model_config=str(config_path))
                overrides.update(learning_rate=learning_rate, warmup_steps=warmup_steps)
                run_recipes.append((variant, TrainingRecipe(**{**base, **overrides})))

    processes = min(recipe.processes or os.cpu_count() or 1, len(run_recipes))
    if processes == 1:
        runs = [run_one(variant, run_recipe) for variant, run_recipe in run_recipes]
    else:
        # Spawned workers with one thread each: parallel runs do not compete for cores or share torch's state.
        with ProcessPoolExecutor(
            processes, mp_context=get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            runs = list(pool.map(run_one, *zip(*run_recipes, strict=True)))

    ranges = usable_lr_ranges(runs, recipe.tolerance)
    write_csv(runs, output_dir / "sweep.csv")
    plot_sweep(runs, output_dir / "sweep.png")
    (output_dir / "usable_lr.md").write_text(format_sweep_report(runs, recipe.tolerance))
    return runs, ranges


def train_shared_tokenizer(recipe: TrainingRecipe, folder: Path) -> Path:
    """One tokenizer for every run of the sweep, trained on the training split of the recipe's text."""
    source = {item.name: getattr(recipe, item.name) for item in fields(TextSource)}
    train_tokenizer_from_source(TokenizerRecipe(**source, output_dir=str(folder), vocab_size=recipe.vocab_size))
    return folder


def run_one(variant: str, recipe: TrainingRecipe) -> SweepRun:
    """One training run of the sweep; its console output goes to `train.log` in its folder, its checkpoints are
    removed afterwards (the final model and `metrics.jsonl` stay)."""
    run_dir = Path(recipe.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    final_train = math.nan
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            result = train(recipe)
            final_train = training_blocks_loss(recipe, result.model, result.tokenizer)
        except FloatingPointError as error:  # the loop stops before a non-finite loss updates the weights
            print(error)
    seconds = time.perf_counter() - start
    for checkpoint in list_checkpoints(run_dir):
        shutil.rmtree(checkpoint)

    metrics = read_metrics(run_dir / METRICS_FILE)
    eval_losses = [row["eval_loss"] for row in metrics if "eval_loss" in row]
    finished = any(row["step"] == recipe.max_steps and "eval_loss" in row for row in metrics)
    initial = eval_losses[0]
    final = eval_losses[-1] if finished else math.nan
    diverged = not math.isfinite(final) or final >= initial
    return SweepRun(variant, recipe.learning_rate, recipe.warmup_steps, initial, final, final_train, diverged, seconds)


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


def usable_lr_ranges(runs: list[SweepRun], tolerance: float = 0.1, across_variants: bool = False) -> list[UsableRange]:
    """Per (variant, warm-up): the best run, and the contiguous span of grid learning rates around it whose final
    loss stays within `tolerance` (a fraction) of the best one, diverged runs excluded.

    With `across_variants` the limit comes from the best run of all variants instead: a variant that trains stably
    but never gets near the others (say, stuck on a plateau at every learning rate) then has no usable range.
    """
    best_of_all = min((run.final_eval_loss for run in runs if not run.diverged), default=math.nan)
    variant_order = {variant: index for index, variant in enumerate(dict.fromkeys(run.variant for run in runs))}
    runs = sorted(runs, key=lambda run: (variant_order[run.variant], -run.warmup_steps, run.learning_rate))
    ranges = []
    for (variant, warmup_steps), group in groupby(runs, key=lambda run: (run.variant, run.warmup_steps)):
        group = list(group)
        diverged = [run.learning_rate for run in group if run.diverged]
        healthy = [index for index, run in enumerate(group) if not run.diverged]
        if not healthy:
            ranges.append(UsableRange(variant, warmup_steps, None, None, None, None, diverged, None))
            continue
        best_index = min(healthy, key=lambda index: group[index].final_eval_loss)
        best = group[best_index]
        limit = (best_of_all if across_variants else best.final_eval_loss) * (1 + tolerance)
        usable = [not run.diverged and run.final_eval_loss <= limit for run in group]
        gap = best.final_eval_loss - best.final_train_loss
        if not usable[best_index]:
            ranges.append(
                UsableRange(variant, warmup_steps, best.learning_rate, best.final_eval_loss, None, None, diverged, gap)
            )
            continue
        low = high = best_index
        while low > 0 and usable[low - 1]:
            low -= 1
        while high < len(group) - 1 and usable[high + 1]:
            high += 1
        ranges.append(
            UsableRange(
                variant,
                warmup_steps,
                best.learning_rate,
                best.final_eval_loss,
                group[low].learning_rate,
                group[high].learning_rate,
                diverged,
                gap,
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
    with open(path, newline="") as file:
        return [
            SweepRun(
                variant=row["variant"],
                learning_rate=float(row["learning_rate"]),
                warmup_steps=int(row["warmup_steps"]),
                initial_eval_loss=float(row["initial_eval_loss"]),
                final_eval_loss=float(row["final_eval_loss"]),
                final_train_loss=float(row["final_train_loss"]),
                diverged=row["diverged"] == "True",
                seconds=float(row["seconds"]),
            )
            for row in csv.DictReader(file)
        ]


def plot_sweep(runs: list[SweepRun], path: Path) -> None:
    """Final held-out loss against learning rate: a colour per variant, dashed without warm-up, x for diverged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    variants = list(dict.fromkeys(run.variant for run in runs))
    warmups = sorted({run.warmup_steps for run in runs}, reverse=True)
    finite = [run.final_eval_loss for run in runs if not run.diverged]
    ceiling = max(finite + [run.initial_eval_loss for run in runs]) if runs else 1.0
    for color, variant in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], variants, strict=False):
        for warmup_steps in warmups:
            series = sorted(
                (r for r in runs if r.variant == variant and r.warmup_steps == warmup_steps),
                key=lambda r: r.learning_rate,
            )
            label = f"{variant}, warm-up {warmup_steps}"
            style = "-" if warmup_steps else "--"
            axes.plot(
                [r.learning_rate for r in series],
                [r.final_eval_loss if math.isfinite(r.final_eval_loss) else np.nan for r in series],
                style,
                marker="o",
                color=color,
                label=label,
            )
            failed = [r for r in series if r.diverged]
            axes.scatter(
                [r.learning_rate for r in failed],
                [min(r.final_eval_loss, ceiling) if math.isfinite(r.final_eval_loss) else ceiling for r in failed],
                marker="x",
                s=80,
                color=color,
            )
    axes.set_xscale("log")
    axes.set_xlabel("peak learning rate")
    axes.set_ylabel("final held-out loss (x: diverged)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_ranges(ranges: list[UsableRange], tolerance: float, across_variants: bool = False) -> str:
    """A Markdown table of the usable learning-rate ranges."""
    reference = "any variant's best run" if across_variants else "the variant's best run"
    lines = [
        f"| variant | warm-up steps | best LR | best loss | usable LR (within {tolerance:.0%} of {reference}) | "
        "decades | diverged at LR | held-out - train at best |",
        "|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for r in ranges:
        diverged = ", ".join(f"{lr:g}" for lr in r.diverged) or "-"
        best = "- | -" if r.best_learning_rate is None else f"{r.best_learning_rate:g} | {r.best_loss:.3f}"
        usable = "none" if r.low is None else f"{r.low:g} - {r.high:g}"
        gap = "-" if r.generalization_gap is None else f"{r.generalization_gap:+.3f}"
        lines.append(f"| {r.variant} | {r.warmup_steps} | {best} | {usable} | {r.decades:.1f} | {diverged} | {gap} |")
    return "\n".join(lines)


def format_sweep_report(runs: list[SweepRun], tolerance: float) -> str:
    """Both tables of `usable_lr.md`: each variant against its own best run, then against the best of all."""
    return (
        f"Usable learning rates: final held-out loss within {tolerance:.0%} of the variant's best run\n\n"
        f"{format_ranges(usable_lr_ranges(runs, tolerance), tolerance)}\n\n"
        f"Usable learning rates: final held-out loss within {tolerance:.0%} of the best run of any variant\n\n"
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
    "plot_depth_profiles",
    "plot_sweep",
    "read_csv",
    "run_sweep",
    "usable_lr_ranges",
    "variant_config",
    "write_csv",
]
