"""Turn a trained output folder into a Hugging Face Hub model repo: weights, tokenizer, remote code, model card.

The repo must work for people who do not have this package: `save_pretrained` copies the two model files and
writes `auto_map`, so `from_pretrained(repo_id, trust_remote_code=True)` and `pipeline(...)` load it from the Hub
alone. The model card is rendered from `model_card.md` (a Jinja template at the repository root, shipped in the
package) with the numbers the run logged in `metrics.jsonl`.
"""

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import transformers
import yaml
from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from transformers.utils.hub import convert_file_size_to_int

from .configuration_albertagpt import MIN_TRANSFORMERS_VERSION
from .data import BUILTIN_HELD_OUT_EVERY, held_out_every
from .modeling_albertagpt import AlbertAGPTForCausalLM
from .training import METRICS_FILE, RECIPE_FILE, read_metrics

# `albertagpt/model_card.md` links to the repository root's template; wheels carry it as package data.
MODEL_CARD_TEMPLATE = Path(__file__).parent / "model_card.md"
LOSS_CURVE_FILENAME = "loss_curve.png"
PATH_FIELDS = ("output_dir", "model_config", "tokenizer", "train_files", "resume_from_checkpoint")
TOKENIZER_FILENAMES = ("tokenizer.json", "tokenizer_config.json")
DEFAULT_MAX_SHARD_SIZE = "5GB"
BUILTIN_CORPUS = "pydoc_data.topics"
BUILTIN_STDLIB_CORPUS = "python-stdlib-sources"
LICENSE = "apache-2.0"
TAGS = ["albertagpt", "albert", "causal-lm", "text-generation", "custom_code"]
# Architecture fields shown in the card's config table, in the order of the forward pass.
CONFIG_TABLE_FIELDS = (
    "vocab_size",
    "embedding_size",
    "hidden_size",
    "num_hidden_layers",
    "num_hidden_groups",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "layer_norm_eps",
    "residual_alpha",
    "residual_init_scale",
    "b2t_connection",
    "tie_word_embeddings",
)
LOGIN_HELP = (
    "No Hugging Face token found, so nothing can be uploaded. Log in once with `hf auth login` "
    "(token from https://huggingface.co/settings/tokens, with write access), or set HF_TOKEN=<token> in the "
    "environment. To only build the repo folder, pass --dry_run DIR."
)


class NotLoggedInError(RuntimeError):
    """Raised before any work when an upload is requested without a Hugging Face token."""


@dataclass
class TrainingMetrics:
    """What `metrics.jsonl` says about the run: the training-loss curve and every held-out evaluation."""

    train_steps: list[int]
    train_losses: list[float]
    eval_steps: list[int]
    eval_losses: list[float]
    perplexities: list[float]

    @property
    def final_step(self) -> int:
        return self.train_steps[-1]

    @property
    def final_loss(self) -> float:
        return self.train_losses[-1]

    @property
    def final_eval_loss(self) -> float:
        return self.eval_losses[-1]

    @property
    def final_perplexity(self) -> float:
        return self.perplexities[-1]


@dataclass
class TrainingData:
    """How the card names the training data: prose for the reader, Hub dataset ids for the metadata."""

    description: str
    hub_datasets: list[str] | None
    eval_dataset_type: str
    eval_dataset_name: str


def check_repo_id(repo_id: str) -> None:
    """Accepts `ORG/NAME` as the Hub does; the namespace is required so the card and the upload name the same repo."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id {repo_id!r} is not a valid Hub repo id: {error}") from error
    if "/" not in repo_id:
        raise ValueError(f"repo_id {repo_id!r} needs a namespace: use ORG/NAME (your user name or an organization).")


def require_token() -> str:
    """The token of `HF_TOKEN` or of a prior `hf auth login`; raises `NotLoggedInError` with login steps if none."""
    token = get_token()
    if token is None:
        raise NotLoggedInError(LOGIN_HELP)
    return token


def check_model_dir(model_dir: Path) -> None:
    """Raises `ValueError` naming `model_dir` and what it lacks unless it is a trained AlbertAGPT output folder."""
    if not model_dir.is_dir():
        raise ValueError(f"model_dir {str(model_dir)!r} does not exist or is not a folder.")
    not_trained = f"model_dir {str(model_dir)!r} is not a trained model folder (the output_dir of `albertagpt train`):"
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{not_trained} it has no config.json.")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != "albertagpt":
        raise ValueError(f"{not_trained} its config.json has model_type {model_type!r}, not 'albertagpt'.")
    if not any((model_dir / name).is_file() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)):
        raise ValueError(f"{not_trained} it has no weights ({SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}).")
    if not (model_dir / METRICS_FILE).is_file():
        raise ValueError(f"{not_trained} it has no {METRICS_FILE}.")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILENAMES):
        raise ValueError(
            f"model_dir {str(model_dir)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILENAMES)}): save the "
            "tokenizer the model was trained with into it (`tokenizer.save_pretrained(model_dir)`)."
        )


def read_training_metrics(metrics_path: Path) -> TrainingMetrics:
    """Reads the training-loss and held-out entries of `metrics.jsonl`; both must be present."""
    metrics = TrainingMetrics([], [], [], [], [])
    for entry in read_metrics(metrics_path):
        if "loss" in entry:
            metrics.train_steps.append(entry["step"])
            metrics.train_losses.append(entry["loss"])
        if "eval_loss" in entry:
            metrics.eval_steps.append(entry["step"])
            metrics.eval_losses.append(entry["eval_loss"])
            metrics.perplexities.append(entry.get("perplexity", math.exp(entry["eval_loss"])))
    if not metrics.train_losses:
        raise ValueError(f"{metrics_path} has no training entries (objects with 'step' and 'loss').")
    if not metrics.eval_losses:
        raise ValueError(
            f"{metrics_path} has no held-out evaluation (objects with 'eval_loss' and 'perplexity'): the card reports "
            "held-out perplexity, so train with evaluation enabled."
        )
    return metrics


def read_recipe(model_dir: Path) -> dict[str, Any] | None:
    """The resolved training recipe saved next to the model, or None if the run did not save one."""
    recipe_path = model_dir / RECIPE_FILE
    return json.loads(recipe_path.read_text()) if recipe_path.is_file() else None


def publishable_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as the repo publishes it: an absolute path in `PATH_FIELDS` keeps only its last component, so that
    the card does not publish the trainer's directory layout (user names included). Relative paths stay."""

    def published(value: Any) -> Any:
        if isinstance(value, list):
            return [published(item) for item in value]
        if isinstance(value, str) and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()):
            return PureWindowsPath(value).name  # splits at both `/` and `\\`
        return value

    return {name: published(value) if name in PATH_FIELDS else value for name, value in recipe.items()}


def describe_training_data(recipe: dict[str, Any] | None) -> TrainingData:
    """Names the corpus from the recipe's data fields (a Hub dataset, local files, or the built-in corpus)."""
    if recipe is None:
        return TrainingData(
            "The training recipe was not saved with this model, so the training data is not recorded here.",
            None,
            "unknown",
            "held-out split of the training data",
        )
    percentage = recipe.get("validation_split_percentage")
    split = f"one document in {held_out_every(percentage)} held out" if percentage else "a held-out share"
    if recipe.get("dataset_name"):
        name = recipe["dataset_name"]
        config_name = f" (config `{recipe['dataset_config_name']}`)" if recipe.get("dataset_config_name") else ""
        return TrainingData(
            f"The Hub dataset [`{name}`](https://huggingface.co/datasets/{name}){config_name}.",
            [name],
            name,
            f"{name}, its validation split (without one: {split})",
        )
    if recipe.get("train_files"):
        files = recipe["train_files"]
        files = [files] if isinstance(files, str) else files
        listed = ", ".join(f"`{Path(file).name}`" for file in files)
        return TrainingData(f"Local text files: {listed}.", None, "local-files", f"{listed}, {split}")
    if recipe.get("builtin_corpus") == "stdlib":
        return TrainingData(
            "The source files of Python's standard library, without its tests, that ship with every Python.",
            None,
            BUILTIN_STDLIB_CORPUS,
            f"Python standard library sources, one file in {BUILTIN_HELD_OUT_EVERY} held out",
        )
    return TrainingData(
        f"The English text of Python's own documentation that ships with every Python (`{BUILTIN_CORPUS}`).",
        None,
        BUILTIN_CORPUS,
        f"Python documentation ({BUILTIN_CORPUS}), one topic in {BUILTIN_HELD_OUT_EVERY} held out",
    )


def plot_loss_curve(metrics: TrainingMetrics, path: Path) -> None:
    """Training loss per logged step, with the held-out loss at each evaluation."""
    # The object-oriented API with the Agg canvas: no display needed, no global pyplot state.
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(metrics.train_steps, metrics.train_losses, label="training loss")
    axes.plot(metrics.eval_steps, metrics.eval_losses, "o-", label="held-out loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def render_model_card(
    model: AlbertAGPTForCausalLM,
    metrics: TrainingMetrics,
    recipe: dict[str, Any] | None,
    repo_id: str,
    template_path: Path = MODEL_CARD_TEMPLATE,
) -> ModelCard:
    """Fills the card template and its YAML metadata (license, tags, datasets, model-index) from the run."""
    if "{{ card_data }}" not in template_path.read_text():
        raise ValueError(
            f"{template_path} is not a model card template (it has no `{{{{ card_data }}}}`). In the package it is a "
            "symbolic link to the repository's model_card.md; a checkout without symbolic links (Windows by default) "
            "holds the link's path instead: clone with `git config core.symlinks true`, or copy model_card.md over it."
        )
    training_data = describe_training_data(recipe)
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        model_name=model_name,
        license=LICENSE,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
        datasets=training_data.hub_datasets,
        eval_results=[
            EvalResult(
                task_type="text-generation",
                task_name="Causal language modeling",
                dataset_type=training_data.eval_dataset_type,
                dataset_name=training_data.eval_dataset_name,
                metric_type="perplexity",
                metric_name="Held-out perplexity",
                metric_value=round(metrics.final_perplexity, 4),
            ),
            EvalResult(
                task_type="text-generation",
                task_name="Causal language modeling",
                dataset_type=training_data.eval_dataset_type,
                dataset_name=training_data.eval_dataset_name,
                metric_type="loss",
                metric_name="Held-out loss (nats/token)",
                metric_value=round(metrics.final_eval_loss, 4),
            ),
        ],
    )
    config = model.config
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        repo_id=repo_id,
        model_name=model_name,
        config_rows=[(field, getattr(config, field)) for field in CONFIG_TABLE_FIELDS],
        num_parameters=model.num_parameters(),
        num_hidden_layers=config.num_hidden_layers,
        num_hidden_groups=config.num_hidden_groups,
        training_data=training_data.description,
        recipe_filename=RECIPE_FILE,
        recipe_yaml=yaml.safe_dump(recipe, sort_keys=False) if recipe is not None else None,
        metrics=metrics,
        loss_curve=LOSS_CURVE_FILENAME,
        transformers_version=transformers.__version__,
        min_transformers_version=MIN_TRANSFORMERS_VERSION,
    )


def load_trained_model(model_dir: Path) -> tuple[AlbertAGPTForCausalLM, PreTrainedTokenizerBase]:
    """Loads model and tokenizer of a checked `model_dir`; weights that do not fit the config are an error."""
    model, loading_info = AlbertAGPTForCausalLM.from_pretrained(model_dir, dtype="auto", output_loading_info=True)
    mismatched = {kind: keys for kind, keys in loading_info.items() if keys and kind != "error_msgs"}
    if mismatched:
        raise ValueError(f"model_dir {str(model_dir)!r}: the weights do not match config.json: {mismatched}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"model_dir {str(model_dir)!r}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}."
        )
    return model, tokenizer


def build_repo_folder(
    model_dir: str | Path, repo_id: str, folder: str | Path, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE
) -> Path:
    """Writes into the empty (or new) `folder` exactly what `push_trained_model` uploads, and returns it.

    Weights are sharded with `model.safetensors.index.json` above `max_shard_size`; the folder also holds
    config.json (with auto_map), the two remote-code files, generation_config.json, the tokenizer, README.md (the
    model card), the loss-curve PNG and the training recipe when the run saved one.
    """
    model_dir, folder = Path(model_dir), Path(folder)
    check_repo_id(repo_id)
    check_model_dir(model_dir)
    try:
        shard_bytes = convert_file_size_to_int(max_shard_size)
    except ValueError as error:
        raise ValueError(f"max_shard_size {max_shard_size!r} is not a size like '5GB' or '500MB'.") from error
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"repo folder {str(folder)!r} must be new or empty, so that it holds exactly the repo.")
    metrics = read_training_metrics(model_dir / METRICS_FILE)
    model, tokenizer = load_trained_model(model_dir)
    recipe = read_recipe(model_dir)
    recipe = publishable_recipe(recipe) if recipe is not None else None

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size=shard_bytes)
    tokenizer.model_max_length = model.config.max_position_embeddings  # also for runs saved before training set it
    tokenizer.save_pretrained(folder)
    if recipe is not None:
        (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    plot_loss_curve(metrics, folder / LOSS_CURVE_FILENAME)
    render_model_card(model, metrics, recipe, repo_id).save(folder / "README.md")
    return folder


def push_trained_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> CommitInfo:
    """Builds the repo folder and uploads it to `repo_id` in one commit, creating the repo (and branch) if needed.

    The token (`HF_TOKEN` or `hf auth login`) is checked before anything else. Weight files of an earlier upload
    that this one does not replace are deleted in the same commit, so a stale `model.safetensors` can never shadow
    a new sharded index.
    """
    check_repo_id(repo_id)
    token = require_token()
    with tempfile.TemporaryDirectory() as staging:
        folder = build_repo_folder(model_dir, repo_id, Path(staging) / "repo", max_shard_size)
        if commit_message is None:
            metrics = read_training_metrics(Path(model_dir) / METRICS_FILE)
            commit_message = (
                f"Upload AlbertAGPT trained for {metrics.final_step} steps "
                f"(held-out perplexity {metrics.final_perplexity:.2f})"
            )
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            delete_patterns=["*.safetensors", SAFE_WEIGHTS_INDEX_NAME],
        )
