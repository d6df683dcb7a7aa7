"""The quality benchmark: AlbertAGPT against transformers' `GPT2LMHeadModel`, trained through the same loop on the
same data, tokenizer and number of tokens (reported in docs/quality.md).

Two comparisons, each model at its own best learning rate of a small grid:

- `equal_compute`: GPT-2 with AlbertAGPT's hidden size, depth, heads and MLP width, so that both spend about the
  same FLOPs per token (AlbertAGPT's factorized embedding and head cost a little more or less, depending on
  `embedding_size`; `flops_per_token` says exactly) while GPT-2 has distinct weights in every layer;
- `equal_params`: GPT-2 with AlbertAGPT's depth and heads, its width chosen so that it has about as many
  parameters as AlbertAGPT (tied weights counted once).

`run_quality_benchmark` trains every model at every grid learning rate with the first seed, then each model's best
learning rate with the other seeds, and writes `quality.json` (one entry per run and comparison; the AlbertAGPT runs
are shared by both comparisons) and a plot of held-out loss against training FLOPs. Runs are single-thread
processes; a finished run is kept, so the same command after a kill trains only what is missing.
"""

import contextlib
import json
import math
import shutil
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, PreTrainedConfig

from .benchmark import count_training_flops
from .checkpointing import list_checkpoints
from .cli import OnResume, recipe_field
from .lab import map_in_processes, save_run_result, saved_run_result, shared_tokenizer
from .training import METRICS_FILE, TrainingRecipe, build_model, read_metrics, train

COMPARISONS = ("equal_compute", "equal_params")


@dataclass
class QualityRecipe(TrainingRecipe):
    """One training recipe for every run (data, tokenizer, steps, batch, schedule, warm-up) plus the grid;
    `model_config` is AlbertAGPT's, `output_dir` holds the runs and results."""

    # The grid takes effect: it decides which runs the benchmark trains. Each run gets a plain `TrainingRecipe`.
    learning_rates: list[float] = recipe_field(
        default_factory=lambda: [1e-3, 3e-3, 1e-2],
        on_resume=OnResume.TAKES_EFFECT,
        help="Peak learning rates tried for each model.",
    )
    seeds: list[int] = recipe_field(
        default_factory=lambda: [42, 43],
        on_resume=OnResume.TAKES_EFFECT,
        help="The first picks the learning rates; all run the best.",
    )
    results_file: str = recipe_field(
        "benchmarks/quality.json", on_resume=OnResume.REPORTING, help="Where the runs are written."
    )
    plot_file: str = recipe_field(
        "docs/quality/loss_vs_flops.png", on_resume=OnResume.REPORTING, help="Held-out loss vs FLOPs."
    )
    processes: int = recipe_field(
        0, on_resume=OnResume.REPORTING, help="Runs in parallel, one thread each (0: one per CPU core)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.learning_rates or any(not 0 < rate < math.inf for rate in self.learning_rates):
            raise ValueError(f"`learning_rates` must be positive and finite, got {self.learning_rates}.")
        if not self.seeds or len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"`seeds` must name at least one seed, each once, got {self.seeds}.")
        if len(set(self.learning_rates)) < len(self.learning_rates):
            raise ValueError(f"`learning_rates` lists a value twice: {self.learning_rates}.")
        if self.processes < 0:
            raise ValueError(f"`processes` must not be negative, got {self.processes}.")


@dataclass
class QualityRun:
    model: str  # "albertagpt" or "gpt2"
    comparison: str  # "equal_compute" or "equal_params"
    parameters: int
    flops_per_token: int  # training (forward + backward) model FLOPs per token, measured with FlopCounterMode
    tokens: int
    learning_rate: float
    seed: int
    final_eval_loss: float  # NaN when the run stopped on a non-finite loss
    eval_curve: list[tuple[int, float]]  # (tokens seen, held-out loss) at every evaluation


def gpt2_config(config: PreTrainedConfig, hidden_size: int, intermediate_size: int) -> GPT2Config:
    """A GPT-2 of AlbertAGPT's depth, heads, positions, activation and norm epsilon, at another width."""
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=intermediate_size,
        activation_function=config.hidden_act,
        layer_norm_epsilon=config.layer_norm_eps,
        resid_pdrop=config.hidden_dropout_prob,
        embd_pdrop=config.hidden_dropout_prob,
        attn_pdrop=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


def parameter_count(config: PreTrainedConfig) -> int:
    """Distinct parameters of the causal LM `config` describes (tied weights once), counted without allocating."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config).num_parameters()


def comparison_configs(albertagpt: PreTrainedConfig) -> dict[str, GPT2Config]:
    """The GPT-2 of each comparison. Equal parameters: the width (a multiple of the head count, MLP 4x as wide, as
    in GPT-2) whose parameter count is closest to AlbertAGPT's."""
    equal_compute = gpt2_config(albertagpt, albertagpt.hidden_size, albertagpt.intermediate_size)
    target = parameter_count(albertagpt)
    heads = albertagpt.num_attention_heads
    widths = range(heads, 4 * albertagpt.hidden_size + 1, heads)
    equal_params = min(
        (gpt2_config(albertagpt, width, 4 * width) for width in widths),
        key=lambda config: abs(parameter_count(config) - target),
    )
    return {"equal_compute": equal_compute, "equal_params": equal_params}


def training_flops_per_token(recipe: TrainingRecipe, tokenizer_folder: str) -> int:
    """FLOPs of one training step on a batch of `block_size` tokens, divided by its tokens."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    model = build_model(recipe, tokenizer)
    input_ids = torch.randint(3, len(tokenizer), (1, recipe.block_size))
    return count_training_flops(model, input_ids) // recipe.block_size


def run_one(recipe: TrainingRecipe) -> dict:
    """Trains one model; returns its final held-out loss and held-out loss curve (keeps only the final model)."""
    run_dir = Path(recipe.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            train(recipe)
        except FloatingPointError as error:  # recorded as a NaN final loss; the benchmark goes on
            print(error)
    for checkpoint in list_checkpoints(run_dir):
        shutil.rmtree(checkpoint)
    evaluations = [row for row in read_metrics(run_dir / METRICS_FILE) if "eval_loss" in row]
    finished = bool(evaluations) and evaluations[-1]["step"] == recipe.max_steps
    result = {
        "final_eval_loss": evaluations[-1]["eval_loss"] if finished else math.nan,
        "eval_curve": [(row["step"] * tokens_per_step(recipe), row["eval_loss"]) for row in evaluations],
    }
    save_run_result(run_dir, recipe, result)
    return result


def tokens_per_step(recipe: TrainingRecipe) -> int:
    return recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps * recipe.block_size


def train_all(recipes: list[TrainingRecipe], processes: int) -> list[dict]:
    """Each recipe's result: read back from its folder when it already ran, else trained (in parallel)."""
    results = [saved_run_result(Path(recipe.output_dir), recipe) for recipe in recipes]
    missing = [index for index, result in enumerate(results) if result is None]
    for index in missing:
        shutil.rmtree(recipes[index].output_dir, ignore_errors=True)  # an unfinished run starts afresh
    trained = map_in_processes(run_one, [(recipes[index],) for index in missing], processes)
    for index, result in zip(missing, trained, strict=True):
        results[index] = result
    return results


def run_quality_benchmark(recipe: QualityRecipe) -> list[QualityRun]:
    """Trains AlbertAGPT and both GPT-2s over the grid; writes `results_file` and `plot_file`."""
    output_dir = Path(recipe.output_dir)
    (output_dir / "configs").mkdir(parents=True, exist_ok=True)
    tokenizer = recipe.tokenizer or str(shared_tokenizer(recipe, output_dir / "tokenizer"))
    base = {item.name: getattr(recipe, item.name) for item in fields(TrainingRecipe)}
    base.update(tokenizer=tokenizer, report_to=["none"], resume_from_checkpoint=None)

    # AlbertAGPT's config with the tokenizer's vocabulary and ids, then the GPT-2 of each comparison.
    albertagpt = build_model(TrainingRecipe(**base), AutoTokenizer.from_pretrained(tokenizer)).config
    models = {"albertagpt": albertagpt}
    models.update({f"gpt2_{name}": config for name, config in comparison_configs(albertagpt).items()})
    config_paths = {name: output_dir / "configs" / f"{name}.json" for name in models}
    for name, config in models.items():
        config.to_json_file(config_paths[name], use_diff=False)

    def run_recipe(name: str, learning_rate: float, seed: int) -> TrainingRecipe:
        run_dir = output_dir / "runs" / f"{name}_lr{learning_rate:g}_seed{seed}"
        overrides = dict(output_dir=str(run_dir), model_config=str(config_paths[name]), seed=seed)
        return TrainingRecipe(**{**base, **overrides, "learning_rate": learning_rate})

    def train_points(points: list[tuple[str, float, int]]) -> dict[tuple[str, float, int], dict]:
        return dict(zip(points, train_all([run_recipe(*point) for point in points], recipe.processes), strict=True))

    first_seed, *other_seeds = recipe.seeds
    results = train_points([(name, rate, first_seed) for name in models for rate in recipe.learning_rates])
    best_rate = {name: best_learning_rate(results, name, recipe.learning_rates, first_seed) for name in models}
    results.update(train_points([(name, best_rate[name], seed) for name in models for seed in other_seeds]))

    facts = {
        name: (
            parameter_count(config),
            training_flops_per_token(run_recipe(name, best_rate[name], first_seed), tokenizer),
        )
        for name, config in models.items()
    }
    tokens = recipe.max_steps * tokens_per_step(recipe)
    runs = []
    for (name, rate, seed), result in results.items():
        model = "albertagpt" if name == "albertagpt" else "gpt2"
        comparisons = COMPARISONS if model == "albertagpt" else (name.removeprefix("gpt2_"),)
        parameters, flops = facts[name]
        curve = [tuple(point) for point in result["eval_curve"]]
        for comparison in comparisons:
            runs.append(
                QualityRun(model, comparison, parameters, flops, tokens, rate, seed, result["final_eval_loss"], curve)
            )
    write_results(runs, Path(recipe.results_file))
    plot_quality(runs, Path(recipe.plot_file))
    return runs


def best_learning_rate(results: dict, name: str, learning_rates: list[float], seed: int) -> float:
    """The grid learning rate with the lowest final held-out loss (the smallest one when every run diverged)."""
    losses = {rate: results[name, rate, seed]["final_eval_loss"] for rate in learning_rates}
    finite = {rate: loss for rate, loss in losses.items() if math.isfinite(loss)}
    return min(finite, key=finite.get) if finite else min(learning_rates)


def write_results(runs: list[QualityRun], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(run) for run in runs], indent=1) + "\n")


def read_results(path: str | Path) -> list[QualityRun]:
    return [
        QualityRun(**{**row, "eval_curve": [tuple(point) for point in row["eval_curve"]]})
        for row in json.loads(Path(path).read_text())
    ]


def best_runs(runs: list[QualityRun], model: str, comparison: str) -> list[QualityRun]:
    """The runs of a model's best learning rate in a comparison: the one that ran with every seed."""
    candidates = [run for run in runs if (run.model, run.comparison) == (model, comparison)]
    by_rate = {}
    for run in candidates:
        by_rate.setdefault(run.learning_rate, []).append(run)
    return max(by_rate.values(), key=len)


def summary(runs: list[QualityRun]) -> list[dict]:
    """Per comparison: each model's best learning rate, parameters, FLOPs per token and final held-out loss (mean
    and standard deviation over seeds), and the AlbertAGPT / GPT-2 loss ratio."""
    rows = []
    for comparison in COMPARISONS:
        means = {}
        for model in ("albertagpt", "gpt2"):
            chosen = best_runs(runs, model, comparison)
            losses = [run.final_eval_loss for run in chosen]
            mean = statistics.fmean(losses)
            means[model] = mean
            rows.append(
                {
                    "comparison": comparison,
                    "model": model,
                    "parameters": chosen[0].parameters,
                    "flops_per_token": chosen[0].flops_per_token,
                    "tokens": chosen[0].tokens,
                    "learning_rate": chosen[0].learning_rate,
                    "seeds": len(chosen),
                    "final_eval_loss": mean,
                    "final_eval_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                }
            )
        rows[-2]["loss_ratio"] = rows[-1]["loss_ratio"] = means["albertagpt"] / means["gpt2"]
    return rows


def format_summary(runs: list[QualityRun]) -> str:
    """A Markdown table of `summary`."""
    lines = [
        "| comparison | model | parameters | training FLOPs/token | tokens | best LR | seeds | final held-out loss "
        "(mean ± sd) | AlbertAGPT / GPT-2 loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary(runs):
        lines.append(
            f"| {row['comparison']} | {row['model']} | {row['parameters']:,} | {row['flops_per_token']:,} | "
            f"{row['tokens']:,} | {row['learning_rate']:g} | {row['seeds']} | {row['final_eval_loss']:.3f} ± "
            f"{row['final_eval_loss_std']:.3f} | {row['loss_ratio']:.3f} |"
        )
    return "\n".join(lines)


def plot_quality(runs: list[QualityRun], path: Path) -> None:
    """Held-out loss against training FLOPs (flops_per_token x tokens seen) at each model's best learning rate, the
    mean over seeds; one panel per comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(COMPARISONS), figsize=(10, 4), sharey=True)
    for panel, comparison in zip(axes, COMPARISONS, strict=True):
        for model in ("albertagpt", "gpt2"):
            chosen = best_runs(runs, model, comparison)
            curves = [run.eval_curve for run in chosen if len(run.eval_curve) == len(chosen[0].eval_curve)]
            tokens = [point[0] for point in curves[0]][1:]  # step 0 has no FLOPs on a log axis
            losses = [statistics.fmean(curve[index][1] for curve in curves) for index in range(1, len(curves[0]))]
            flops = [chosen[0].flops_per_token * count for count in tokens]
            label = f"{model} ({chosen[0].parameters / 1e6:.2f}M params, LR {chosen[0].learning_rate:g})"
            panel.plot(flops, losses, marker="o", ms=3, label=label)
        panel.set_xscale("log")
        panel.set_xlabel("training FLOPs")
        panel.set_title(comparison.replace("_", " "), fontsize=10)
        panel.grid(True, which="both", alpha=0.3)
        panel.legend(fontsize=8)
    axes[0].set_ylabel("held-out loss (nats/token)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


__all__ = [
    "QualityRecipe",
    "QualityRun",
    "comparison_configs",
    "format_summary",
    "read_results",
    "run_quality_benchmark",
    "summary",
]
