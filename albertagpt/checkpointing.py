"""Checkpoints of a training run: atomic writes, the file list that proves them intact, and the lock of `output_dir`.

A checkpoint is Accelerate's `save_state` (model, optimizer, every rank's RNG state, the registered scheduler and
loop progress) plus what a resumed run checks or needs: the tokenizer, the model's `config.json` with the remote
code it names, the recipe, and `checkpoint_files.json`, every file's size and SHA-256, written last. Everything
goes into a temporary folder that is renamed when complete, so a killed run never leaves a half-written
`checkpoint-<step>`.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, extract_model_from_parallel, gather_object
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.dynamic_module_utils import custom_object_save

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TEMPORARY_PREFIX = ".tmp-"  # a checkpoint being written; never matches CHECKPOINT_NAME
CHECKPOINT_MANIFEST = "checkpoint_files.json"  # every file of a checkpoint, its size and SHA-256, written last
CHECKPOINT_MODEL_CONFIG = "config.json"  # the architecture the checkpoint's weights belong to
RECIPE_FILE = "training_recipe.json"
OUTPUT_LOCK = ".train.lock"  # held by the run writing into an output_dir


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished `checkpoint-<step>` folders, oldest first; temporary folders of an interrupted write never match."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(match[1]), path) for path in output_dir.iterdir() if (match := CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found) if path.is_dir()]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def write_recipe(recipe: Mapping[str, Any], folder: Path) -> None:
    (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Mapping[str, Any],
    save_total_limit: int | None,
) -> Path:
    """Writes `checkpoint-<step>` atomically: everything goes into a temporary folder that is then renamed, and only
    the newest `save_total_limit` checkpoints are kept. `model` is the unwrapped model (its config and remote code).

    A process killed during the write leaves only the temporary folder, which `latest` ignores and the
    next save of that step replaces. A write that fails (a full disk) removes it and says so.
    """
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f"{TEMPORARY_PREFIX}{final.name}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary))  # every rank writes its own RNG state into it
        accelerator.wait_for_everyone()  # all ranks' files are in place before the manifest lists them
        if accelerator.is_main_process:
            tokenizer.save_pretrained(temporary)
            save_model_config(model, temporary)
            write_recipe(recipe, temporary)
            write_manifest(temporary)
    except Exception as error:  # torch reports a full disk as "unexpected pos ..." without naming it
        shutil.rmtree(temporary, ignore_errors=True)
        free_mib = shutil.disk_usage(output_dir).free / 2**20
        raise RuntimeError(
            f"Writing {final.name} failed ({error}); {free_mib:.0f} MiB are free on the disk of {output_dir}. The "
            "earlier checkpoints are intact: free space, then resume with `--resume_from_checkpoint latest`."
        ) from error
    if accelerator.is_main_process:
        if final.exists():  # resumed from an earlier checkpoint, this step is reached again
            shutil.rmtree(final)
        os.replace(temporary, final)
        if save_total_limit is not None:
            for old in list_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def save_model_config(model: PreTrainedModel, folder: Path) -> None:
    """`config.json` with every field, defaults included (what a resumed run compares its model config with), and,
    when the config names remote code (`auto_map`), the files of that code, copied as `save_pretrained` copies them:
    a checkpoint then loads with `trust_remote_code=True` where this package is not installed."""
    if model.is_remote_code():
        custom_object_save(model, folder, config=model.config)
    model.config.to_json_file(folder / CHECKPOINT_MODEL_CONFIG, use_diff=False)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(2**24):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    files = [path for path in sorted(folder.rglob("*")) if path.is_file()]
    entries = {
        str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)} for path in files
    }
    (folder / CHECKPOINT_MANIFEST).write_text(json.dumps(entries, indent=2) + "\n")


def verify_checkpoint(folder: Path, accelerator: Accelerator) -> None:
    """Checks that every file the checkpoint was written with is there, at its size and with its SHA-256. A deleted,
    truncated or altered file is named here instead of failing deep inside `load_state` or, for a rank's RNG state or
    altered weights, not failing at all (the run would resume, but not exactly). Checkpoints written before the
    manifest existed are not checked, and those whose manifest holds sizes only are checked for sizes.

    Each process hashes its share of the files, so that every file is read once however many processes resume, and
    every process raises the same error, named by the first process that found one."""
    problems = gather_object([checkpoint_problem(folder, accelerator.process_index, accelerator.num_processes)])
    problem = next((problem for problem in problems if problem is not None), None)
    if problem is not None:
        raise ValueError(
            f"Checkpoint {folder} is damaged: {problem}. Resume from an earlier checkpoint "
            "(`--resume_from_checkpoint <folder>`, or delete this one and use `latest`) or start a new run."
        )


def checkpoint_problem(folder: Path, process_index: int = 0, num_processes: int = 1) -> str | None:
    """What `verify_checkpoint` finds wrong with the share of `process_index` among `num_processes` of the files of
    `folder` (by default all of them), or None."""
    manifest = folder / CHECKPOINT_MANIFEST
    if not manifest.is_file():
        return None
    # Every failure is a verdict, not an exception: the other processes wait for this one's verdict.
    try:
        entries = json.loads(manifest.read_text())
        expected = {
            name: (entry, None) if isinstance(entry, int) else (entry["bytes"], entry["sha256"])
            for name, entry in entries.items()
        }
    except json.JSONDecodeError as error:
        return f"its file list {CHECKPOINT_MANIFEST} is not JSON ({error})"
    except (AttributeError, KeyError, TypeError) as error:
        return f"its file list {CHECKPOINT_MANIFEST} is damaged ({type(error).__name__}: {error})"
    sizes = {name: size for name, (size, _) in expected.items()}
    for name in share_of_files(sizes, process_index, num_processes):
        try:
            problem = file_problem(folder / name, *expected[name])
        except OSError as error:
            problem = f"cannot be read ({error})"
        if problem is not None:
            return f"{name} {problem}"
    return None


def share_of_files(sizes: Mapping[str, int], process_index: int, num_processes: int) -> list[str]:
    """The files `process_index` checks: largest first, each to the process with the fewest bytes so far, so that
    every file goes to one process and the processes read about equally much. Every process computes the same
    split from the same manifest."""
    assigned_bytes = [0] * num_processes
    share = []
    for name in sorted(sizes, key=lambda name: (-sizes[name], name)):
        process = assigned_bytes.index(min(assigned_bytes))
        assigned_bytes[process] += sizes[name]
        if process == process_index:
            share.append(name)
    return share


def file_problem(path: Path, size: int, sha256: str | None) -> str | None:
    if not path.is_file():
        return "is missing"
    if path.stat().st_size != size:
        return f"has {path.stat().st_size} bytes instead of {size}"
    if sha256 is not None and file_sha256(path) != sha256:
        return "has other content than when it was written (SHA-256 differs)"
    return None


@contextlib.contextmanager
def exclusive_output_dir(output_dir: Path, accelerator: Accelerator) -> Iterator[None]:
    """Two runs writing into one `output_dir` would interleave their metrics and overwrite each other's checkpoints:
    the main process holds a lock on `output_dir/.train.lock` for the run (the system releases it when the process
    ends, even by SIGKILL), and every process stops when another run holds it. Without `fcntl` (Windows), or on a
    file system without `flock`, the run goes on unlocked."""
    with contextlib.ExitStack() as held:
        refusal = lock_output_dir(output_dir, held) if accelerator.is_main_process else None
        refusal = broadcast_object_list([refusal])[0]  # every rank stops, not only the main one
        if refusal is not None:
            raise RuntimeError(refusal)
        yield


def lock_output_dir(output_dir: Path, held: contextlib.ExitStack) -> str | None:
    """Takes the lock of `output_dir` until `held` closes; returns why it cannot, or None."""
    if fcntl is None:
        return None
    lock = held.enter_context((output_dir / OUTPUT_LOCK).open("w"))
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return (
            f"Another run is writing into `output_dir` {str(output_dir)!r} (it holds {OUTPUT_LOCK}): wait for it to "
            "end, or choose another `output_dir`."
        )
    except OSError as error:  # e.g. Lustre mounted without flock, some FUSE file systems
        tqdm.write(f"Warning: cannot lock {output_dir} ({error}); nothing stops a second run from writing into it.")
    return None


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # what DDP and `torch.compile` put before the model's own names


def save_weights_as_save_pretrained(models: list[torch.nn.Module], weights: list[dict], output_dir: str) -> None:
    """`save_state` pre-hook: a checkpoint's weights named as `save_pretrained` names them, so that
    `from_pretrained(checkpoint)` loads them: without the prefixes of a wrapper (Accelerate saves a DDP model's
    keys as `module.*`), and without the copies the model declares tied (Accelerate would drop them too, but with
    a warning that a user cannot act on); loading ties them again. Under FSDP and DeepSpeed `weights` is empty:
    those engines save the model themselves."""
    for model, state_dict in zip(models, weights, strict=False):
        tied = getattr(extract_model_from_parallel(model), "all_tied_weights_keys", None) or {}
        for key in list(state_dict):
            name = key
            while name.startswith(WRAPPER_PREFIXES):
                name = name.split(".", 1)[1]
            value = state_dict.pop(key)
            if name not in tied:
                state_dict[name] = value


def load_weights_into_unwrapped_models(models: list[torch.nn.Module], input_dir: str) -> None:
    """`load_state` pre-hook: the weights `save_weights_as_save_pretrained` wrote carry the model's own names, so
    they load into the model inside a wrapper (whose parameters the wrapper shares)."""
    models[:] = [extract_model_from_parallel(model) for model in models]


__all__ = [
    "CHECKPOINT_MANIFEST",
    "load_weights_into_unwrapped_models",
    "save_weights_as_save_pretrained",
    "exclusive_output_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "save_checkpoint",
    "verify_checkpoint",
]
