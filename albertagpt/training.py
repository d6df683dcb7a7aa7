"""Pretraining with Accelerate: one loop from one CPU to many GPUs and nodes.

A run has three steps: `build_run` (data, tokenizer, model, optimizer and schedule, prepared by Accelerate, and the
checkpoint's state when resuming), `fit` (the loop) and `finish` (the final model and the report). The loop is one
visible sequence per optimizer step: `gradient_accumulation_steps` micro-batches (forward, backward), a check that
the loss is finite, gradient clipping, AdamW step, scheduler step, then logging, held-out evaluation with a
generated sample, and an atomic checkpoint (`albertagpt.checkpointing`).

Resuming is exact: a checkpoint holds Accelerate's state (model, optimizer, every rank's RNG) plus the
scheduler and the loop's own progress (optimizer steps done, epoch, micro-batches consumed in the
epoch, and the held-out losses the run reports at its end); the data order is re-created by seeding the sampler
per epoch and skipping the consumed batches with `skip_first_batches`.
"""

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.tracking import GeneralTracker
from accelerate.utils import GradientAccumulationPlugin, set_seed
from datasets import IterableDataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SchedulerType,
    get_scheduler,
)

from .checkpointing import (
    CHECKPOINT_MODEL_CONFIG,
    RECIPE_FILE,
    exclusive_output_dir,
    latest_checkpoint,
    list_checkpoints,
    load_weights_into_unwrapped_models,
    save_checkpoint,
    save_weights_as_save_pretrained,
    verify_checkpoint,
    write_recipe,
)
from .cli import OnResume, on_resume, recipe_field
from .configuration_albertagpt import AlbertAGPTConfig
from .data import AnyDataset, TextSource, iter_texts, load_text_splits, pack_into_blocks
from .diagnostics import DiagnosticsRecorder
from .modeling_albertagpt import AlbertAGPTForCausalLM
from .presets import resolve_preset
from .tokenizer import train_tokenizer

METRICS_FILE = "metrics.jsonl"
# Model config fields a resumed run may change, and why; every other field must be the checkpoint's.
CONFIG_FIELDS_A_RESUME_MAY_CHANGE = {
    "initializer_range": "the weights come from the checkpoint",
    "use_cache": "it only concerns inference",
    "vocab_size": "the checkpoint's tokenizer sets it",
    "pad_token_id": "the checkpoint's tokenizer sets it",
    "bos_token_id": "the checkpoint's tokenizer sets it",
    "eos_token_id": "the checkpoint's tokenizer sets it",
}
MIXED_PRECISION_CHOICES = ("no", "bf16", "fp16")
# A held-out loss within this many nats of the unigram loss, after warm-up, is the post-LN plateau: warned about.
UNIGRAM_PLATEAU_MARGIN = 0.05


@dataclass
class TrainingRecipe(TextSource):
    """Every field of a `configs/train/*.yaml` recipe; each can be overridden as `--field value`.

    Each field declares what it does when a run resumes with another value than its checkpoint was written with
    (`OnResume`): the checkpoint restores the optimizer's hyper-parameters and the tokenizer, reporting fields may
    change freely, `model_config` must give the checkpoint's architecture, and any other change takes effect."""

    output_dir: str = recipe_field(
        "runs/albertagpt", on_resume=OnResume.REPORTING, help="Final model, checkpoints, metrics."
    )
    model_config: str = recipe_field(
        "tiny",
        on_resume=OnResume.MUST_MATCH,  # the path may change; the config it gives is compared (`check_model_config`)
        help="A model config JSON or preset name (train from scratch: tiny, base, large, ...) or a saved model "
        "folder (continue from it).",
    )
    tokenizer: str | None = recipe_field(
        None,
        on_resume=OnResume.RESTORED,
        help="Tokenizer folder; when absent, one is trained on the training split.",
    )
    vocab_size: int = recipe_field(
        8000, on_resume=OnResume.RESTORED, help="Vocabulary of the tokenizer trained when none is given."
    )
    block_size: int = recipe_field(128, on_resume=OnResume.TAKES_EFFECT, help="Tokens per training row.")
    per_device_train_batch_size: int = recipe_field(
        16, on_resume=OnResume.TAKES_EFFECT, help="Rows of block_size tokens per process and micro-batch."
    )
    per_device_eval_batch_size: int = recipe_field(
        16, on_resume=OnResume.REPORTING, help="Held-out rows per process and evaluation batch."
    )
    gradient_accumulation_steps: int = recipe_field(
        1, on_resume=OnResume.TAKES_EFFECT, help="Micro-batches per optimizer step."
    )
    # The optimizer's and the scheduler's saved states hold the learning rate, the betas and the weight decay.
    learning_rate: float = recipe_field(
        1e-3, on_resume=OnResume.RESTORED, help="Peak AdamW learning rate, reached after the warm-up."
    )
    weight_decay: float = recipe_field(
        0.1, on_resume=OnResume.RESTORED, help="AdamW decay of matrices (not of norms and biases)."
    )
    adam_beta1: float = recipe_field(0.9, on_resume=OnResume.RESTORED, help="AdamW's first-moment decay.")
    adam_beta2: float = recipe_field(0.95, on_resume=OnResume.RESTORED, help="AdamW's second-moment decay.")
    lr_scheduler_type: str = recipe_field(
        "cosine", on_resume=OnResume.TAKES_EFFECT, help="Any transformers `SchedulerType`."
    )
    warmup_steps: int = recipe_field(
        100,
        on_resume=OnResume.TAKES_EFFECT,
        help="Linear warm-up to the peak learning rate, in optimizer steps; post-LN needs a long one.",
    )
    max_steps: int = recipe_field(1000, on_resume=OnResume.TAKES_EFFECT, help="Optimizer steps of the whole run.")
    max_grad_norm: float = recipe_field(
        1.0, on_resume=OnResume.TAKES_EFFECT, help="Clip the global gradient norm (0: no clipping)."
    )
    mixed_precision: str | None = recipe_field(
        None,
        on_resume=OnResume.TAKES_EFFECT,
        help="no, bf16 (also on CPU) or fp16 (GPU only); unset: what `accelerate launch` says (no).",
    )
    seed: int = recipe_field(
        42, on_resume=OnResume.TAKES_EFFECT, help="Seeds the initial weights, the data order and dropout."
    )
    cpu_threads: int | None = recipe_field(
        None, on_resume=OnResume.REPORTING, help="torch.set_num_threads for each process; unset: torch's default."
    )
    logging_steps: int = recipe_field(
        10, on_resume=OnResume.REPORTING, help="Log the training loss and tokens/s every this many steps."
    )
    eval_steps: int = recipe_field(
        200, on_resume=OnResume.REPORTING, help="Evaluate held out (and generate a sample) every this many steps."
    )
    max_eval_batches: int | None = recipe_field(
        None, on_resume=OnResume.REPORTING, help="Cap on held-out batches per evaluation, in each process."
    )
    checkpointing_steps: int = recipe_field(
        500, on_resume=OnResume.REPORTING, help="Write a checkpoint every this many steps, and at the end."
    )
    save_total_limit: int | None = recipe_field(
        2, on_resume=OnResume.REPORTING, help="Keep only the newest N checkpoints."
    )
    report_to: list[str] = recipe_field(
        default_factory=lambda: ["tensorboard"],
        on_resume=OnResume.REPORTING,
        help="Accelerate trackers besides metrics.jsonl (tensorboard, wandb, ...) or none.",
    )
    resume_from_checkpoint: str | None = recipe_field(
        None,
        on_resume=OnResume.REPORTING,
        help="A checkpoint folder, `latest` (the newest one in output_dir, if any) or `none`.",
    )
    sample_prompt: str = recipe_field(
        "", on_resume=OnResume.REPORTING, help="Start of the sample generated at each evaluation."
    )
    sample_max_new_tokens: int = recipe_field(
        64, on_resume=OnResume.REPORTING, help="Length of the sample generated at each evaluation."
    )
    diagnostics: bool = recipe_field(
        False,
        on_resume=OnResume.REPORTING,
        help="At every logging step, also log per-layer-application gradient norms, activation RMS around "
        "each norm and update-to-weight ratios (albertagpt.diagnostics).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixed_precision is False:  # YAML reads an unquoted `mixed_precision: no` as false
            self.mixed_precision = "no"
        if self.resume_from_checkpoint in ("none", ""):  # a recipe's `latest` switched off on the command line
            self.resume_from_checkpoint = None
        if self.cpu_threads is not None and self.cpu_threads <= 0:
            raise ValueError(f"`cpu_threads` must be a positive integer, got {self.cpu_threads}.")
        for name in (
            "vocab_size",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "max_steps",
            "logging_steps",
            "eval_steps",
            "checkpointing_steps",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be positive, got {self.learning_rate}.")
        if self.warmup_steps < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError("`warmup_steps`, `max_grad_norm` and `weight_decay` must not be negative.")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(
                f"`mixed_precision` must be one of {MIXED_PRECISION_CHOICES}, got {self.mixed_precision!r}."
            )
        schedulers = [item.value for item in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise ValueError(f"`lr_scheduler_type` must be one of {schedulers}, got {self.lr_scheduler_type!r}.")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"`save_total_limit` must be at least 1 (or unset), got {self.save_total_limit}.")


@dataclass
class TrainingProgress:
    """The loop's own state, saved in every checkpoint (`accelerator.step` counts micro-batches and is not saved),
    with the held-out evaluations a run reports at its end: a resumed run neither repeats nor re-reads them."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` consumed on this process
    initial_eval_loss: float | None = None  # at step 0 (None: resumed from a checkpoint written before it was kept)
    final_eval_loss: float | None = None  # at `max_steps`, evaluated before the last checkpoint is written
    final_sample: str = ""  # generated with the final evaluation

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():  # an older checkpoint lacks the evaluations: they keep their defaults
            setattr(self, name, value)


@dataclass
class TrainingResult:
    output_dir: Path
    model: AlbertAGPTForCausalLM
    tokenizer: PreTrainedTokenizerBase
    initial_eval_loss: float | None  # None when resumed from a checkpoint that does not hold it
    final_eval_loss: float
    sample: str

    @property
    def initial_perplexity(self) -> float | None:
        return None if self.initial_eval_loss is None else math.exp(self.initial_eval_loss)

    @property
    def final_perplexity(self) -> float:
        return math.exp(self.final_eval_loss)


class JsonlTracker(GeneralTracker):
    """An Accelerate tracker writing one JSON object per `accelerator.log` call to `output_dir/metrics.jsonl`.

    At start (after a checkpoint was loaded into `progress`) it keeps only the rows up to the resumed step,
    so that a resumed run does not repeat the steps a killed run had logged after its last checkpoint.
    """

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, path: Path, progress: TrainingProgress):
        super().__init__()
        self.path = path
        self.progress = progress

    @property
    def tracker(self) -> Path:
        return self.path

    def start(self) -> None:
        resumed_step = self.progress.step
        kept = [row for row in read_metrics(self.path) if row["step"] <= resumed_step] if resumed_step else []
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps({"step": step, **values}) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a `metrics.jsonl` file (empty when it does not exist). A last row cut short, by a kill or a full
    disk during its write, is left out: a resumed run rewrites the file without it. Any other row that is not JSON
    is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for index, (number, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if index == len(lines) - 1:
                break
            raise ValueError(f"{path}, line {number}, is not a JSON row ({error}).") from error
    return rows


# -------------------------------------------------------------------------------------------------- resuming


def resolve_checkpoint(recipe: TrainingRecipe) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run (also `latest` when there is none yet)."""
    if recipe.resume_from_checkpoint is None:
        existing = list_checkpoints(recipe.output_dir)
        if existing:
            raise ValueError(
                f"`output_dir` {recipe.output_dir!r} already holds checkpoints ({existing[-1].name}, ...): pass "
                "`--resume_from_checkpoint latest` to continue that run, or choose another `output_dir`."
            )
        return None
    if recipe.resume_from_checkpoint == "latest":
        return latest_checkpoint(recipe.output_dir)
    path = Path(recipe.resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"`resume_from_checkpoint` {str(path)!r} is not a checkpoint folder.")
    return path


def resume_policy(item: Field) -> OnResume:
    """What a recipe field does on resume, as its declaration says (`recipe_field(..., on_resume=...)`)."""
    policy = on_resume(item)
    if policy is None:
        raise TypeError(f"Recipe field `{item.name}` declares no `on_resume`: declare it with `recipe_field`.")
    return policy


def recipe_changes(saved: Mapping[str, Any], recipe: TrainingRecipe) -> dict[str, list[str]]:
    """`field: old -> new` for every field that differs from the saved recipe, split into those the checkpoint
    overrides (`"restored"`) and those that take effect (`"applied"`). Reporting fields may change, and what
    `model_config` gives is compared by content (`check_model_config`), not by its path."""
    changes = {"restored": [], "applied": []}
    values = asdict(recipe)
    for item in fields(recipe):
        policy = resume_policy(item)
        name = item.name
        if policy in (OnResume.REPORTING, OnResume.MUST_MATCH) or name not in saved or saved[name] == values[name]:
            continue
        changes["restored" if policy is OnResume.RESTORED else "applied"].append(
            f"{name}: {saved[name]!r} -> {values[name]!r}"
        )
    return changes


def warn_about_recipe_changes(accelerator: Accelerator, saved_recipe: Path, recipe: TrainingRecipe) -> None:
    """Says what differs from the recipe the checkpoint was written with (checkpoints from before the recipe was saved
    in them are not compared), and which of the differences the checkpoint overrides."""
    if not saved_recipe.is_file():
        return
    changes = recipe_changes(json.loads(saved_recipe.read_text()), recipe)
    if changes["restored"] or changes["applied"]:
        outcome = (
            "The run will not match an uninterrupted one."
            if changes["applied"]
            else "The run still matches an uninterrupted one."
        )
        say(
            accelerator,
            f"Warning: resuming with a recipe that differs from the one {saved_recipe.parent.name} was written with. "
            f"Taking effect: {'; '.join(changes['applied']) or 'nothing'}. Ignored, restored from the checkpoint: "
            f"{'; '.join(changes['restored']) or 'nothing'}. {outcome}",
        )


def check_model_config(checkpoint: Path, config: PreTrainedConfig) -> None:
    """A checkpoint resumes the model it was written with. Another config could load weights of the same shapes (a
    shared block applied more often) and silently train a different model, or fail deep inside `load_state_dict`.
    Not compared: `CONFIG_FIELDS_A_RESUME_MAY_CHANGE`. Checkpoints written before they held their config are not
    compared."""
    saved_path = checkpoint / CHECKPOINT_MODEL_CONFIG
    if not saved_path.is_file():
        return
    saved = type(config).from_json_file(saved_path)  # fields the file lacks take their defaults
    compared = [name for name in type(config).__annotations__ if name not in CONFIG_FIELDS_A_RESUME_MAY_CHANGE]
    changed = [
        f"{name}: {getattr(saved, name)!r} -> {getattr(config, name)!r}"
        for name in compared
        if getattr(saved, name) != getattr(config, name)
    ]
    if changed:
        raise ValueError(
            f"{checkpoint.name} holds a model whose config differs from what `model_config` gives now "
            f"({'; '.join(changed)}). Resume with the model config it was written with; to train the other model, "
            "start a new run in another `output_dir`."
        )


def check_resumed_step(checkpoint: Path, step: int, max_steps: int) -> None:
    """A checkpoint past `max_steps` would end the run at once, at a step the recipe never asked for."""
    if step > max_steps:
        raise ValueError(
            f"{checkpoint.name} is at step {step}, beyond `max_steps` ({max_steps}): raise `max_steps`, or resume "
            "from an earlier checkpoint."
        )


def warn_about_process_count(accelerator: Accelerator, checkpoint: Path) -> None:
    """Every rank restores its own RNG state; Accelerate only logs a missing one. A checkpoint written by another
    number of processes resumes with another data split and RNG streams: say so."""
    written_by = len(list(checkpoint.glob("random_states_*.pkl")))
    if written_by != accelerator.num_processes:
        say(
            accelerator,
            f"Warning: {checkpoint.name} was written by {written_by} process(es), this run has "
            f"{accelerator.num_processes}: the data order and random streams change, so the run will not match an "
            "uninterrupted one.",
        )


def check_gradient_accumulation(accelerator: Accelerator, recipe_steps: int) -> None:
    """The loop accumulates the recipe's number of micro-batches per optimizer step, but Accelerate lets a DeepSpeed
    config's `gradient_accumulation_steps` replace the recipe's: DeepSpeed would then step more often than the
    schedule."""
    if accelerator.gradient_accumulation_steps != recipe_steps:
        raise ValueError(
            f"The Accelerate config sets `gradient_accumulation_steps` to {accelerator.gradient_accumulation_steps}, "
            f'the recipe to {recipe_steps}: set it to "auto" in a DeepSpeed JSON file, or leave it out of the '
            "Accelerate YAML's `deepspeed_config`, so that Accelerate passes the recipe's; or make the two equal."
        )


def read_model_config(model_config: str) -> PreTrainedConfig:
    """The architecture of a config JSON, a saved model folder or a preset's name (for checks before anything is
    built). A JSON file without `model_type` is an AlbertAGPT config; another `model_type` (e.g. `gpt2`, as the
    quality benchmark trains) is that transformers architecture."""
    path = resolve_preset(model_config, "model")
    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    model_type = json.loads(path.read_text()).get("model_type", AlbertAGPTConfig.model_type)
    if model_type == AlbertAGPTConfig.model_type:
        return AlbertAGPTConfig.from_json_file(path)
    return AutoConfig.for_model(model_type).from_json_file(path)


def saved_model_folder(recipe: TrainingRecipe) -> Path | None:
    """The saved model the recipe continues from, or None when `model_config` is a config (a file or a preset)."""
    path = resolve_preset(recipe.model_config, "model")
    return path if path.is_dir() else None


def has_tokenizer(folder: str | Path) -> bool:
    return (Path(folder) / "tokenizer_config.json").is_file()


def prepare_tokenizer(
    recipe: TrainingRecipe, accelerator: Accelerator, checkpoint: Path | None, train_split: AnyDataset
) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer when resuming, else the recipe's, else the model folder's, else (for a new model
    only) a new one.

    A new one is trained on the training split by the main process and saved to `output_dir`, where the
    other processes load it.
    """
    for candidate in (checkpoint, recipe.tokenizer, saved_model_folder(recipe)):
        if candidate is not None and has_tokenizer(candidate):
            return AutoTokenizer.from_pretrained(candidate)
    if recipe.tokenizer is not None:
        raise FileNotFoundError(f"`tokenizer` {recipe.tokenizer!r} is not a tokenizer folder.")
    if saved_model_folder(recipe) is not None:
        raise FileNotFoundError(
            f"The model to continue from, {recipe.model_config!r}, has no tokenizer: pass `tokenizer` (the folder of "
            "the tokenizer it was trained with). A newly trained tokenizer's ids would not match its embeddings."
        )
    if accelerator.is_main_process:
        say(
            accelerator,
            f"Training a byte-level BPE tokenizer (vocab_size <= {recipe.vocab_size}) on the training split",
        )
        tokenizer = train_tokenizer(iter_texts(train_split, recipe.text_column), recipe.vocab_size)
        tokenizer.save_pretrained(recipe.output_dir)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(recipe.output_dir)


def build_model(recipe: TrainingRecipe, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A new model whose vocabulary is the tokenizer's, or the saved model to continue from."""
    path = saved_model_folder(recipe)
    if path is not None:
        model = AutoModelForCausalLM.from_pretrained(path)
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model in {str(path)!r} only "
                f"`vocab_size` {model.config.vocab_size}: use that model's tokenizer."
            )
        return model
    config = read_model_config(recipe.model_config)
    values = config.to_dict()
    values.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = type(config).from_dict(values)
    if isinstance(config, AlbertAGPTConfig):
        return AlbertAGPTForCausalLM(config)
    model = AutoModelForCausalLM.from_config(config)  # another architecture through the same loop
    model.loss_type = "ForCausalLM"  # a class name that names no loss (`GPT2LMHeadModel`) would warn, then use it
    return model


def check_weight_tying(model: torch.nn.Module) -> None:
    """`prepare` (DDP, FSDP, DeepSpeed) must keep the head decoding with the token embedding matrix."""
    if (
        model.config.tie_word_embeddings
        and model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    ):
        raise RuntimeError("The LM head is no longer tied to the token embeddings after `accelerator.prepare`.")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices (linear and embedding weights) decay; norms and biases (vectors) do not."""
    decay, no_decay = [], []
    for parameter in model.parameters():  # yields a tied parameter once
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_dataloader(
    blocks: AnyDataset,
    batch_size: int,
    collator: Callable[[list[dict[str, Any]]], Mapping[str, torch.Tensor]],
    seed: int,
    shuffle: bool,
) -> DataLoader:
    """Its own generator: an iterator without one draws a seed from the global RNG and shifts dropout on resume."""
    generator = torch.Generator().manual_seed(seed)
    iterable = isinstance(blocks, IterableDataset)
    if iterable and shuffle:
        blocks = blocks.shuffle(seed=seed, buffer_size=10_000)
    return DataLoader(
        blocks,
        batch_size=batch_size,
        shuffle=shuffle and not iterable,
        drop_last=shuffle,  # equal batches on every rank: two processes then see what one process sees
        collate_fn=collator,
        generator=generator,
    )


def micro_batches(
    dataloader: DataLoader, accelerator: Accelerator, progress: TrainingProgress
) -> Iterator[Mapping[str, torch.Tensor]]:
    """Endless training batches; the same order after a resume (per-epoch seed + skipping consumed batches)."""
    while True:
        epoch_loader = dataloader
        if progress.batches_in_epoch:
            epoch_loader = accelerator.skip_first_batches(dataloader, progress.batches_in_epoch)
        epoch_loader.set_epoch(progress.epoch)
        iterator = iter(epoch_loader)
        # Starting an epoch draws a seed from the global RNG when the loader has no generator of its own
        # (Accelerate's dispatching loader for streamed data drops it). A resumed run restores that RNG at
        # another point of the epoch, so the draw must stay out of the training (dropout) stream.
        with torch.random.fork_rng(devices=[]):
            batch = next(iterator, None)
        if batch is None and progress.batches_in_epoch == 0:
            raise ValueError(
                "The training data does not fill a single batch of `per_device_train_batch_size` blocks of "
                "`block_size` tokens: lower them or add data."
            )
        while batch is not None:
            progress.batches_in_epoch += 1
            yield batch
            batch = next(iterator, None)
        progress.epoch += 1
        progress.batches_in_epoch = 0


def say(accelerator: Accelerator, message: str) -> None:
    if accelerator.is_main_process:
        tqdm.write(message)


# ----------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, dataloader: DataLoader, accelerator: Accelerator, max_batches: int | None
) -> float:
    """Mean held-out loss per predicted token over all blocks (tokens the collator labels -100 do not count)."""
    model.eval()
    loss_sums, token_counts = [], []
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            break
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits.float()  # no KV cache: nothing decodes
        labels = batch["labels"][:, 1:]  # -100 where the collator ignores a token (a pad id that is also eos)
        token_losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="none"
        ).view_as(labels)
        # Sums and counts per block, so that `gather_for_metrics` drops exactly the blocks that Accelerate repeated to
        # give every process a full last batch (a batch mean would carry them in).
        loss_sums.append(accelerator.gather_for_metrics(token_losses.sum(1)))
        token_counts.append(accelerator.gather_for_metrics((labels != -100).sum(1)))
    model.train()
    if not loss_sums:
        raise ValueError("The held-out split holds no full block of `block_size` tokens: lower it or add data.")
    return (torch.cat(loss_sums).sum() / torch.cat(token_counts).sum()).item()


def forked_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Random draws inside leave the training run's random stream (CPU, and `device`'s) as it was."""
    return torch.random.fork_rng(devices=[] if device.type == "cpu" else None, device_type=device.type)


@torch.no_grad()
def held_out_unigram_loss(
    dataloader: DataLoader, accelerator: Accelerator, max_batches: int | None, vocab_size: int
) -> float:
    """The loss of the best unigram model of the tokens `evaluate` scores (their own frequencies, a lower bound for
    any model of token frequencies alone): a run whose held-out loss stays at it has learned nothing else. Read on a
    forked RNG: a dataloader may draw from the global one, and a resumed run must not draw where the first did not."""
    counts = torch.zeros(vocab_size, dtype=torch.long, device=accelerator.device)
    with forked_rng(accelerator.device):
        for index, batch in enumerate(dataloader):
            if max_batches is not None and index >= max_batches:
                break
            labels = accelerator.gather_for_metrics(batch["labels"][:, 1:]).flatten()
            counts += torch.bincount(labels[labels != -100], minlength=vocab_size)
    probabilities = counts[counts > 0].double() / counts.sum()
    return -(probabilities * probabilities.log()).sum().item()


def warn_about_unigram_plateau(
    accelerator: Accelerator, step: int, eval_loss: float, unigram_loss: float, recipe: TrainingRecipe
) -> None:
    """After warm-up, a held-out loss at the unigram loss means the model predicts token frequencies only."""
    if step > recipe.warmup_steps and eval_loss > unigram_loss - UNIGRAM_PLATEAU_MARGIN:
        say(
            accelerator,
            f"Warning: at step {step} the held-out loss ({eval_loss:.3f}) is no better than the unigram loss "
            f"({unigram_loss:.3f}): the model predicts token frequencies only. Post-LN runs stall like this when "
            "the gradient vanishes through the stack (see docs/stability.md): lengthen `warmup_steps`, lower "
            "`learning_rate`, or try "
            "`b2t_connection`; `--diagnostics true` shows the gradient per layer application.",
        )


def sample_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """`</s>` + `prompt`: documents follow `</s>` in the packed training data."""
    return [tokenizer.eos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def check_sample_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, max_positions: int) -> None:
    """Before training: a sample prompt that fills the learned positions would fail at the first evaluation."""
    length = len(sample_prompt_ids(tokenizer, prompt))
    if length >= max_positions:
        raise ValueError(
            f"`sample_prompt` is {length} tokens (with the `</s>` before it): the model's `max_position_embeddings` "
            f"({max_positions}) leaves no room to generate a sample. Shorten it."
        )


@torch.no_grad()
def generate_sample(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    prompt: str,
    max_new_tokens: int,
    seed: int,
) -> str:
    """A sampled continuation of `</s>` + `prompt`, on a forked RNG so that evaluating never changes the training
    run's random stream."""
    model = accelerator.unwrap_model(model)
    model.eval()
    input_ids = torch.tensor([sample_prompt_ids(tokenizer, prompt)], device=accelerator.device)
    with forked_rng(accelerator.device):
        torch.manual_seed(seed)
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            # learned positions end at `max_position_embeddings`: a sample never runs past them
            max_new_tokens=min(max_new_tokens, model.config.max_position_embeddings - input_ids.shape[1]),
            do_sample=True,
            top_k=50,
            temperature=0.8,
            pad_token_id=tokenizer.pad_token_id,
        )
    model.train()
    return prompt + tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What the steps of a run share once `build_run` has prepared it."""

    recipe: TrainingRecipe
    accelerator: Accelerator
    progress: TrainingProgress  # registered for checkpointing, with the scheduler
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module  # as `accelerator.prepare` wrapped it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    eval_loader: DataLoader
    unigram_loss: float  # of the held-out tokens: where a model that learned token frequencies only stays
    recorder: DiagnosticsRecorder | None  # `--diagnostics true`

    @property
    def output_dir(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def unwrapped_model(self) -> PreTrainedModel:
        return self.accelerator.unwrap_model(self.model)


def train(recipe: TrainingRecipe) -> TrainingResult:
    """Runs (or resumes) a pretraining run and saves the final model and tokenizer in `recipe.output_dir`: checks
    the recipe, finds the checkpoint to resume from, sets up Accelerate and, holding `output_dir`, checks the
    checkpoint, then builds, fits and finishes the run."""
    output_dir = Path(recipe.output_dir)
    model_config = read_model_config(recipe.model_config)
    if recipe.block_size > model_config.max_position_embeddings:
        raise ValueError(
            f"`block_size` ({recipe.block_size}) exceeds the model's `max_position_embeddings` "
            f"({model_config.max_position_embeddings})."
        )
    checkpoint = resolve_checkpoint(recipe)
    output_dir.mkdir(parents=True, exist_ok=True)
    if recipe.cpu_threads is not None:
        torch.set_num_threads(recipe.cpu_threads)
    progress = TrainingProgress()
    accelerator = make_accelerator(recipe, progress)
    with exclusive_output_dir(output_dir, accelerator):
        if checkpoint is not None:  # before any data or model is prepared
            verify_checkpoint(checkpoint, accelerator)
            check_model_config(checkpoint, model_config)
        run = build_run(recipe, accelerator, progress, checkpoint)
        fit(run)
        return finish(run)


def make_accelerator(recipe: TrainingRecipe, progress: TrainingProgress) -> Accelerator:
    trackers = [name for name in recipe.report_to if name != "none"]
    accelerator = Accelerator(
        mixed_precision=recipe.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=recipe.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.seed),
        log_with=[JsonlTracker(Path(recipe.output_dir) / METRICS_FILE, progress), *trackers],
        project_dir=recipe.output_dir,
    )
    accelerator.register_save_state_pre_hook(save_weights_as_save_pretrained)
    accelerator.register_load_state_pre_hook(load_weights_into_unwrapped_models)
    # Set by the recipe or by `accelerate launch`, fp16 on a CPU would train in fp32 without a word.
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("`mixed_precision` fp16 needs a GPU; on a CPU use bf16, or no.")
    return accelerator


def tracker_config(recipe: TrainingRecipe) -> dict:
    """The recipe as hyper-parameters; TensorBoard accepts only scalars and strings."""
    return {
        name: value if isinstance(value, int | float | str | bool) else str(value)
        for name, value in asdict(recipe).items()
    }


def build_run(
    recipe: TrainingRecipe, accelerator: Accelerator, progress: TrainingProgress, checkpoint: Path | None
) -> Run:
    """Tokenizer, model, data, optimizer and schedule, prepared by Accelerate; then the checkpoint's state, the
    trackers, and the unigram loss of the held-out tokens."""
    with accelerator.main_process_first():  # the main process fills the `datasets` cache, the others reuse it
        splits = load_text_splits(recipe)
    tokenizer = prepare_tokenizer(recipe, accelerator, checkpoint, splits["train"])
    set_seed(recipe.seed)  # the same initial weights on every process and in every run of this recipe
    model = build_model(recipe, tokenizer)
    check_sample_prompt(tokenizer, recipe.sample_prompt, model.config.max_position_embeddings)  # before packing
    with accelerator.main_process_first():
        train_blocks = pack_into_blocks(splits["train"], tokenizer, recipe.block_size, recipe.text_column)
        eval_blocks = pack_into_blocks(splits["validation"], tokenizer, recipe.block_size, recipe.text_column)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    train_loader = make_dataloader(train_blocks, recipe.per_device_train_batch_size, collator, recipe.seed, True)
    eval_loader = make_dataloader(eval_blocks, recipe.per_device_eval_batch_size, collator, recipe.seed, False)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, recipe.weight_decay),
        lr=recipe.learning_rate,
        betas=(recipe.adam_beta1, recipe.adam_beta2),
    )
    # Kept out of `prepare`, which would step it once per process; it steps once per optimizer step.
    scheduler = get_scheduler(
        recipe.lr_scheduler_type, optimizer, num_warmup_steps=recipe.warmup_steps, num_training_steps=recipe.max_steps
    )
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    check_gradient_accumulation(accelerator, recipe.gradient_accumulation_steps)
    check_weight_tying(accelerator.unwrap_model(model))
    accelerator.register_for_checkpointing(progress, scheduler)
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, recipe, progress)
    if accelerator.is_main_process:
        write_recipe(asdict(recipe), Path(recipe.output_dir))
    accelerator.init_trackers("tensorboard", config=tracker_config(recipe))
    vocab_size = accelerator.unwrap_model(model).config.vocab_size
    unigram_loss = held_out_unigram_loss(eval_loader, accelerator, recipe.max_eval_batches, vocab_size)
    recorder = DiagnosticsRecorder(accelerator.unwrap_model(model), optimizer) if recipe.diagnostics else None
    return Run(
        recipe=recipe,
        accelerator=accelerator,
        progress=progress,
        tokenizer=tokenizer,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        eval_loader=eval_loader,
        unigram_loss=unigram_loss,
        recorder=recorder,
    )


def load_checkpoint(
    accelerator: Accelerator, checkpoint: Path, recipe: TrainingRecipe, progress: TrainingProgress
) -> None:
    """Restores everything registered with `accelerator` (model, optimizer, RNG states, scheduler, `progress`),
    after saying what of the recipe and the process count differs from the run that wrote `checkpoint`."""
    say(accelerator, f"Resuming from {checkpoint}")
    warn_about_recipe_changes(accelerator, checkpoint / RECIPE_FILE, recipe)
    warn_about_process_count(accelerator, checkpoint)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # a file of the right size but unreadable content
        raise RuntimeError(f"Could not load checkpoint {checkpoint}: {error}") from error
    check_resumed_step(checkpoint, progress.step, recipe.max_steps)


def fit(run: Run) -> None:
    """The loop, from the progress it resumes (step 0: a fresh run, evaluated first) until `max_steps`."""
    recipe, accelerator, progress, model = run.recipe, run.accelerator, run.progress, run.model
    if progress.step == 0:
        progress.initial_eval_loss, _ = evaluate_and_log(run, 0)
    if progress.step < recipe.max_steps:  # a run continued past an earlier `max_steps`: that evaluation is stale
        progress.final_eval_loss, progress.final_sample = None, ""
    batches = micro_batches(run.train_loader, accelerator, progress)
    progress_bar = tqdm(
        total=recipe.max_steps, initial=progress.step, desc="training", disable=not accelerator.is_main_process
    )
    interval_losses, interval_seconds = [], 0.0  # since the last logging step
    model.train()
    while progress.step < recipe.max_steps:
        step = progress.step + 1
        step_start = time.perf_counter()
        logging_step = step % recipe.logging_steps == 0 or step == recipe.max_steps
        if run.recorder is not None and logging_step:
            run.recorder.start()  # hooks record this step's forward, backward and optimizer step
        step_loss = torch.zeros((), device=accelerator.device)
        for _ in range(recipe.gradient_accumulation_steps):
            # Accelerate skips the gradient all-reduce on all but the last micro-batch of the step and
            # divides the loss by `gradient_accumulation_steps` in `backward`.
            with accelerator.accumulate(model):
                loss = model(**next(batches), use_cache=False).loss  # a KV cache would only hold memory
                step_loss += loss.detach().float() / recipe.gradient_accumulation_steps
                accelerator.backward(loss)
        loss_value = accelerator.reduce(step_loss, reduction="mean").item()
        check_finite_loss(loss_value, step, run.output_dir)  # before the update: the weights stay finite
        if recipe.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        progress.step = step
        progress_bar.update(1)
        interval_losses.append(loss_value)
        interval_seconds += time.perf_counter() - step_start  # evaluation and saving do not count against tokens/s

        if logging_step:
            log_training(run, interval_losses, interval_seconds, progress_bar)
            interval_losses, interval_seconds = [], 0.0
        if step == recipe.max_steps:
            evaluate_final_model(run)  # before the last checkpoint, which then holds its result
        elif step % recipe.eval_steps == 0:
            evaluate_and_log(run, step)
        if step % recipe.checkpointing_steps == 0 or step == recipe.max_steps:
            save_checkpoint(
                accelerator,
                run.output_dir,
                step,
                run.unwrapped_model,
                run.tokenizer,
                asdict(recipe),
                recipe.save_total_limit,
            )
    progress_bar.close()


def check_finite_loss(loss_value: float, step: int, output_dir: Path) -> None:
    if not math.isfinite(loss_value):
        last_good = latest_checkpoint(output_dir)
        kept = (
            "No checkpoint was written yet"
            if last_good is None
            else f"The last good checkpoint, untouched, is {last_good}"
        )
        raise FloatingPointError(
            f"Non-finite training loss ({loss_value}) at step {step}: stopped before updating the weights. "
            f"{kept}; lower `learning_rate` or check the data."
        )


def log_training(run: Run, interval_losses: list[float], interval_seconds: float, progress_bar: tqdm) -> None:
    """The mean training loss, learning rate and speed since the last logging step (and the diagnostics)."""
    recipe = run.recipe
    tokens_per_step = (
        recipe.per_device_train_batch_size
        * recipe.gradient_accumulation_steps
        * run.accelerator.num_processes
        * recipe.block_size
    )
    metrics = {
        "loss": sum(interval_losses) / len(interval_losses),
        "learning_rate": run.scheduler.get_last_lr()[0],
        "tokens_per_second": len(interval_losses) * tokens_per_step / interval_seconds,
        "epoch": run.progress.epoch,
    }
    if run.recorder is not None:
        metrics.update(run.recorder.collect().to_metrics())
    run.accelerator.log(metrics, step=run.progress.step)
    progress_bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_second']:.0f}")


def evaluate_and_log(run: Run, step: int) -> tuple[float, str]:
    """The held-out loss and a generated sample at `step`, logged and printed; a non-finite loss stops the run."""
    eval_loss = evaluate(run.model, run.eval_loader, run.accelerator, run.recipe.max_eval_batches)
    if not math.isfinite(eval_loss):  # an update after the last loss check diverged; sampling would crash
        raise FloatingPointError(
            f"Non-finite held-out loss ({eval_loss}) at step {step}: the weights diverged after the last finite "
            "training loss. Lower `learning_rate`; checkpoints written since that loss hold the diverged weights."
        )
    recipe = run.recipe
    sample = generate_sample(
        run.model, run.tokenizer, run.accelerator, recipe.sample_prompt, recipe.sample_max_new_tokens, recipe.seed
    )
    metrics = {"eval_loss": eval_loss, "perplexity": math.exp(eval_loss), "unigram_loss": run.unigram_loss}
    run.accelerator.log({**metrics, "sample": sample}, step=step)
    say(run.accelerator, f"step {step}: held-out loss {eval_loss:.4f}, perplexity {math.exp(eval_loss):.2f}")
    warn_about_unigram_plateau(run.accelerator, step, eval_loss, run.unigram_loss, recipe)
    say(run.accelerator, f"sample: {sample!r}")
    return eval_loss, sample


def evaluate_final_model(run: Run) -> None:
    """The evaluation at `max_steps`, kept in the progress that the last checkpoint saves."""
    run.progress.final_eval_loss, run.progress.final_sample = evaluate_and_log(run, run.progress.step)


def finish(run: Run) -> TrainingResult:
    """Saves the final model and tokenizer in `output_dir` and reports the run."""
    accelerator, progress, output_dir = run.accelerator, run.progress, run.output_dir
    if progress.final_eval_loss is None:  # resumed at `max_steps` from a checkpoint that does not hold it
        evaluate_final_model(run)
    model = run.unwrapped_model
    model.save_pretrained(
        output_dir,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=accelerator.get_state_dict(run.model),
    )
    if accelerator.is_main_process:
        # Saved with the model, `truncation=True` stops where the learned positions end. Only here: checkpoints keep
        # the tokenizer the run started with, so that a resumed run tokenizes alike and reuses the `datasets` cache.
        run.tokenizer.model_max_length = model.config.max_position_embeddings
        run.tokenizer.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()

    result = TrainingResult(
        output_dir, model, run.tokenizer, progress.initial_eval_loss, progress.final_eval_loss, progress.final_sample
    )
    before = "?" if result.initial_perplexity is None else f"{result.initial_perplexity:.2f}"
    say(
        accelerator,
        f"Held-out perplexity: {before} before training -> {result.final_perplexity:.2f} after {progress.step} steps",
    )
    say(
        accelerator,
        f"Model and tokenizer saved to {output_dir} (AutoModelForCausalLM / AutoTokenizer.from_pretrained)",
    )
    say(accelerator, f"Generated sample: {result.sample!r}")
    return result


__all__ = [
    "JsonlTracker",
    "TrainingProgress",
    "TrainingRecipe",
    "TrainingResult",
    "read_metrics",
    "train",
]
