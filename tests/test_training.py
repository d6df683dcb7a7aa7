"""The Accelerate pretraining loop: outputs, optimizer details, exact resume after SIGKILL, two processes
equal one, atomic checkpoints, non-finite losses, bad input, recipes, and the FSDP2 wrap plan."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.commands.config.config_args import load_config_from_file
from fsdp2_worker import fsdp_test_model, global_batches, train_steps
from helpers import (
    REPO_ROOT,
    TINY_SIZES,
    free_port,
    reset_accelerate_state,
    run_torchrun,
    run_without_package,
    subprocess_env,
    tiny_config,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, get_scheduler

import albertagpt.checkpointing
import albertagpt.training
from albertagpt import AlbertAGPTConfig, AlbertAGPTForCausalLM
from albertagpt.checkpointing import (
    CHECKPOINT_MANIFEST,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    share_of_files,
    verify_checkpoint,
    write_manifest,
)
from albertagpt.cli import OnResume, load_recipe, parse_recipe, recipe_field
from albertagpt.data import builtin_corpus
from albertagpt.distributed import FSDP_UNIT_CLASSES
from albertagpt.tokenizer import train_tokenizer
from albertagpt.training import (
    CONFIG_FIELDS_A_RESUME_MAY_CHANGE,
    TrainingRecipe,
    check_gradient_accumulation,
    check_model_config,
    evaluate,
    held_out_unigram_loss,
    parameter_groups,
    read_metrics,
    recipe_changes,
    train,
    warn_about_process_count,
    warn_about_unigram_plateau,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and in-process and subprocess runs must reduce in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A small text file, a 400-token tokenizer, and tiny model configs (with and without dropout)."""
    root = tmp_path_factory.mktemp("training")
    documents = [text[:1500] for text in builtin_corpus("train")[:40]]
    (root / "corpus.txt").write_text("\n\n".join(text.replace("\n\n", "\n") for text in documents))
    train_tokenizer(documents, vocab_size=400).save_pretrained(root / "tokenizer")
    (root / "model.json").write_text(json.dumps({**TINY_SIZES, "hidden_dropout_prob": 0.1}))
    (root / "model_no_dropout.json").write_text(json.dumps(TINY_SIZES))
    return root


def make_recipe(workspace: Path, output_dir: Path, **overrides) -> TrainingRecipe:
    fields = dict(
        output_dir=str(output_dir),
        model_config=str(workspace / "model.json"),
        tokenizer=str(workspace / "tokenizer"),
        train_files=[str(workspace / "corpus.txt")],
        validation_split_percentage=10,
        block_size=32,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        warmup_steps=2,
        max_steps=8,
        logging_steps=2,
        eval_steps=4,
        checkpointing_steps=4,
        max_eval_batches=4,
        report_to=["none"],
        sample_max_new_tokens=8,
        seed=0,
    )
    fields.update(overrides)
    return TrainingRecipe(**fields)


def write_yaml(recipe: TrainingRecipe, path: Path) -> Path:
    path.write_text(yaml.safe_dump(asdict(recipe)))
    return path


def fixed_batch_logits(model_dir: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.arange(3 * 32).reshape(3, 32) * 7 % model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=ids).logits


def max_weight_difference(dir_a: Path, dir_b: Path) -> float:
    a, b = load_file(dir_a / "model.safetensors"), load_file(dir_b / "model.safetensors")
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def reference_run(workspace, tmp_path_factory) -> Path:
    """The uninterrupted run that the resumed runs must reproduce."""
    reset_accelerate_state()
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    train(make_recipe(workspace, output_dir))
    return output_dir


def test_run_writes_a_loadable_model_metrics_and_checkpoints(workspace, tmp_path):
    recipe = make_recipe(
        workspace, tmp_path / "run", tokenizer=None, vocab_size=350, save_total_limit=1, report_to=["tensorboard"]
    )
    result = train(recipe)
    out = Path(recipe.output_dir)

    # The tokenizer was trained on the training split first; the model's vocabulary is the tokenizer's.
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 350 == result.model.config.vocab_size
    # `truncation=True` stops where the learned positions end, so truncated text always fits the model.
    assert tokenizer.model_max_length == result.model.config.max_position_embeddings
    assert len(tokenizer("print(x) " * 2000, truncation=True)["input_ids"]) == tokenizer.model_max_length
    # Tying survives `prepare` and training; the folder loads with the Auto classes and computes the same.
    model = result.model
    assert model.lm_head.weight is model.model.embeddings.word_embeddings.weight
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(reloaded, AlbertAGPTForCausalLM)
    ids = torch.tensor([tokenizer("The class statement")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(ids).logits, model.eval()(ids).logits, rtol=0, atol=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_albertagpt.AlbertAGPTForCausalLM"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    assert (out / "model.safetensors").is_file() and (out / "modeling_albertagpt.py").is_file()

    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [row for row in rows if "loss" in row]
    eval_rows = [row for row in rows if "eval_loss" in row]
    assert [row["step"] for row in train_rows] == [2, 4, 6, 8]
    assert [row["step"] for row in eval_rows] == [0, 4, 8]
    assert all(row["tokens_per_second"] > 0 and math.isfinite(row["loss"]) for row in train_rows)
    for row in eval_rows:
        assert row["perplexity"] == pytest.approx(math.exp(row["eval_loss"]))
        assert row["unigram_loss"] == eval_rows[0]["unigram_loss"]  # one reference for the whole run
        assert isinstance(row["sample"], str)
    # Before training the model is near uniform over the vocabulary; eight steps already lower the loss.
    assert 0.5 * 350 < eval_rows[0]["perplexity"] < 2 * 350
    assert eval_rows[-1]["eval_loss"] < eval_rows[0]["eval_loss"] - 0.1
    assert result.initial_perplexity == pytest.approx(eval_rows[0]["perplexity"])
    assert result.final_perplexity == pytest.approx(eval_rows[-1]["perplexity"])
    # The logged learning rate is transformers' warm-up + cosine schedule, stepped once per optimizer step.
    schedule = get_scheduler("cosine", torch.optim.SGD([torch.zeros(1)], lr=1e-2), 2, 8)
    expected = []
    for _ in range(8):
        schedule.optimizer.step()
        schedule.step()
        expected.append(schedule.get_last_lr()[0])
    assert [row["learning_rate"] for row in train_rows] == pytest.approx(expected[1::2])

    # save_total_limit=1 keeps the newest checkpoint only; it holds Accelerate's state, the loop's and the tokenizer.
    assert [path.name for path in list_checkpoints(out)] == ["checkpoint-8"]
    files = {path.name for path in (out / "checkpoint-8").iterdir()}
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "tokenizer.json"} <= files
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


def test_norms_and_biases_are_not_decayed():
    model = AlbertAGPTForCausalLM(tiny_config())
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decayed = {names[id(parameter)] for parameter in decay["params"]}
    not_decayed = {names[id(parameter)] for parameter in no_decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert decayed | not_decayed == set(names.values()) and not decayed & not_decayed
    assert all(name.endswith("bias") or "LayerNorm" in name or "layernorm" in name for name in not_decayed)
    assert all(name.endswith("weight") and "norm" not in name.lower() for name in decayed)
    assert "model.embeddings.word_embeddings.weight" in decayed  # the tied head matrix, counted once
    assert len(decayed) == 2 + 1 + 2 * 6 + 1  # embeddings, mapping, 6 linears per group, head dense


def test_gradient_accumulation_equals_one_larger_batch(workspace, tmp_path):
    model_config = str(workspace / "model_no_dropout.json")
    common = dict(model_config=model_config, max_steps=4, eval_steps=4, checkpointing_steps=4)
    train(make_recipe(workspace, tmp_path / "accumulated", per_device_train_batch_size=2, **common))
    reset_accelerate_state()
    train(
        make_recipe(
            workspace, tmp_path / "large", per_device_train_batch_size=4, gradient_accumulation_steps=1, **common
        )
    )
    torch.testing.assert_close(
        fixed_batch_logits(tmp_path / "accumulated"), fixed_batch_logits(tmp_path / "large"), rtol=0, atol=1e-4
    )


def test_bf16_autocast_trains_on_cpu(workspace, reference_run, tmp_path):
    result = train(make_recipe(workspace, tmp_path / "bf16", mixed_precision="bf16"))
    rows = [row for row in read_metrics(tmp_path / "bf16" / "metrics.jsonl") if "eval_loss" in row]
    reference_rows = [row for row in read_metrics(reference_run / "metrics.jsonl") if "eval_loss" in row]
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"] - 0.1
    assert rows[-1]["eval_loss"] == pytest.approx(reference_rows[-1]["eval_loss"], abs=0.05)
    # The weights stay fp32 (autocast computes in bf16), and bf16 rounding made a different model.
    assert {tensor.dtype for tensor in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.float32}
    assert next(result.model.parameters()).dtype == torch.float32
    assert max_weight_difference(tmp_path / "bf16", reference_run) > 1e-4


def test_streamed_data_trains_and_resumes_exactly(workspace, tmp_path, monkeypatch):
    train(make_recipe(workspace, tmp_path / "uninterrupted", streaming=True))
    rows = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"] - 0.1
    real_replace = os.replace

    def killed_before_rename(source, destination):
        if Path(destination).name == "checkpoint-8":
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", killed_before_rename)
    reset_accelerate_state()
    with pytest.raises(KeyboardInterrupt):
        train(make_recipe(workspace, tmp_path / "resumed", streaming=True))
    monkeypatch.setattr(os, "replace", real_replace)
    reset_accelerate_state()
    train(make_recipe(workspace, tmp_path / "resumed", streaming=True, resume_from_checkpoint="latest"))
    assert max_weight_difference(tmp_path / "resumed", tmp_path / "uninterrupted") <= 1e-6


def test_resume_after_sigkill_is_exact(workspace, reference_run, tmp_path):
    out = tmp_path / "killed"
    config = write_yaml(make_recipe(workspace, out), tmp_path / "recipe.yaml")
    command = [sys.executable, "scripts/train.py", "--config", str(config)]
    env = subprocess_env(tmp_path)
    with open(tmp_path / "killed.log", "w") as log:
        # Evaluating at every step slows the run after checkpoint-4 enough to kill it there; evaluation
        # runs on a forked RNG and does not change training.
        process = subprocess.Popen(command + ["--eval_steps", "1"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 180
        while not (out / "checkpoint-4").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert [path.name for path in list_checkpoints(out)] == ["checkpoint-4"]
    assert not (out / "model.safetensors").exists()

    resumed = subprocess.run(
        command + ["--resume_from_checkpoint", "latest"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr + resumed.stdout
    assert max_weight_difference(out, reference_run) <= 1e-6
    # metrics.jsonl reads as one run: steps after the checkpoint come from the resumed run, once.
    steps = [row["step"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    assert steps == [2, 4, 6, 8]


def test_two_processes_equal_one_with_the_same_global_batch(workspace, tmp_path):
    model_config = str(workspace / "model_no_dropout.json")  # dropout masks differ between ranks
    common = dict(model_config=model_config, gradient_accumulation_steps=1, max_steps=6, checkpointing_steps=6)
    # All 99 held-out blocks, in batches of 4: the last batch of a process is part real blocks, part repeated ones.
    common.update(max_eval_batches=None, per_device_eval_batch_size=4)
    train(make_recipe(workspace, tmp_path / "one", per_device_train_batch_size=4, **common))
    config = write_yaml(
        make_recipe(workspace, tmp_path / "two", per_device_train_batch_size=2, **common), tmp_path / "r.yaml"
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--main_process_port", str(free_port())]

    def launch_two_processes(*command: str) -> subprocess.CompletedProcess:
        env = {**subprocess_env(tmp_path), "ACCELERATE_USE_CPU": "true"}
        return subprocess.run(launch + list(command), cwd=REPO_ROOT, env=env, capture_output=True, text=True)

    # The command the docs give; the resumes below launch the script instead.
    completed = launch_two_processes("-m", "albertagpt", "train", "--config", str(config))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "two" / "checkpoint-6" / "random_states_1.pkl").is_file()  # a second rank took part
    torch.testing.assert_close(
        fixed_batch_logits(tmp_path / "two"), fixed_batch_logits(tmp_path / "one"), rtol=0, atol=1e-4
    )
    # The blocks Accelerate repeats to fill the last batch of a process do not count in the held-out loss.
    eval_losses = [
        [row["eval_loss"] for row in read_metrics(tmp_path / run / "metrics.jsonl") if "eval_loss" in row]
        for run in ("one", "two")
    ]
    assert len(eval_losses[0]) == 3
    torch.testing.assert_close(torch.tensor(eval_losses[1]), torch.tensor(eval_losses[0]), rtol=0, atol=1e-4)

    # The checkpoint's weights carry the model's own names, not DDP's `module.*`: `from_pretrained` loads them, and
    # two processes resume from them (into the model inside the DDP wrapper).
    checkpoint = tmp_path / "two" / "checkpoint-6"
    torch.testing.assert_close(fixed_batch_logits(checkpoint), fixed_batch_logits(tmp_path / "two"), rtol=0, atol=0)
    resumed = launch_two_processes("scripts/train.py", "--config", str(config), "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr

    # Resuming, each process hashes its share of the checkpoint's files; a damaged file in the second process's share
    # stops both processes, with the same message.
    sizes = {
        name: entry["bytes"] for name, entry in json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text()).items()
    }
    shares = [share_of_files(sizes, process, 2) for process in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(sizes) and shares[1]
    damaged = checkpoint / shares[1][0]
    damaged.write_bytes(damaged.read_bytes()[:-1] + bytes([damaged.read_bytes()[-1] ^ 1]))
    resumed = launch_two_processes("scripts/train.py", "--config", str(config), "--resume_from_checkpoint", "latest")
    assert resumed.returncode != 0
    message = f"checkpoint-6 is damaged: {damaged.name} has other content than when it was written"
    assert resumed.stderr.count(message) >= 2, resumed.stderr[-3000:]  # raised by each process


def test_interrupted_checkpoint_write_is_never_latest(workspace, reference_run, tmp_path, monkeypatch):
    recipe = make_recipe(workspace, tmp_path / "run")
    real_replace = os.replace

    def killed_before_rename(source, destination):
        if Path(destination).name == "checkpoint-8":
            raise KeyboardInterrupt("killed between writing and renaming checkpoint-8")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        train(recipe)
    monkeypatch.setattr(os, "replace", real_replace)
    out = Path(recipe.output_dir)
    assert (out / ".tmp-checkpoint-8" / "model.safetensors").is_file()  # fully written, never renamed
    assert latest_checkpoint(out) == out / "checkpoint-4"

    reset_accelerate_state()
    result = train(make_recipe(workspace, out, resume_from_checkpoint="latest"))
    # The "before" number of a resumed run is the one its first part logged at step 0.
    assert result.initial_eval_loss == read_metrics(reference_run / "metrics.jsonl")[0]["eval_loss"]
    assert [path.name for path in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-8"]
    assert not (out / ".tmp-checkpoint-8").exists()
    assert max_weight_difference(out, reference_run) <= 1e-6

    # Resuming a finished run only reports it: no steps, nothing logged twice, the same model.
    rows = read_metrics(out / "metrics.jsonl")
    reset_accelerate_state()
    again = train(make_recipe(workspace, out, resume_from_checkpoint="latest"))
    assert read_metrics(out / "metrics.jsonl") == rows
    assert again.final_eval_loss == pytest.approx(result.final_eval_loss, abs=1e-6)
    assert max_weight_difference(out, reference_run) <= 1e-6


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(workspace, reference_run, tmp_path, monkeypatch):
    real_forward = AlbertAGPTForCausalLM.forward
    training_calls = []

    def diverging_forward(self, *args, **kwargs):
        output = real_forward(self, *args, **kwargs)
        if self.training:
            training_calls.append(1)
            if len(training_calls) > 10:  # two micro-batches per step: step 6 onwards
                output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(AlbertAGPTForCausalLM, "forward", diverging_forward)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="at step 6") as error:
        train(make_recipe(workspace, out))
    assert "checkpoint-4" in str(error.value)
    assert [path.name for path in list_checkpoints(out)] == ["checkpoint-4"]
    assert not (out / "model.safetensors").exists()
    # Untouched: the same bytes as the uninterrupted run's checkpoint at step 4.
    for name in ("model.safetensors", "optimizer.bin"):
        assert (out / "checkpoint-4" / name).read_bytes() == (reference_run / "checkpoint-4" / name).read_bytes()

    training_calls.clear()
    reset_accelerate_state()
    with pytest.raises(FloatingPointError, match="at step 6.*No checkpoint was written yet"):
        train(make_recipe(workspace, tmp_path / "early", checkpointing_steps=8))


def test_bad_input_is_named(workspace, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"`block_size` \(128\) exceeds the model's `max_position_embeddings` \(64\)"):
        train(make_recipe(workspace, tmp_path / "a", block_size=128))
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        train(make_recipe(workspace, tmp_path / "b", train_files=[str(tmp_path / "nowhere.txt")]))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        train(make_recipe(workspace, tmp_path / "c", train_files=[str(tmp_path / "empty.txt")]))
    with pytest.raises(ValueError, match="does not fill a single batch"):
        train(make_recipe(workspace, tmp_path / "g", per_device_train_batch_size=100_000))
    with pytest.raises(FileNotFoundError, match="model_config"):
        train(make_recipe(workspace, tmp_path / "d", model_config=str(tmp_path / "none.json")))

    # Continuing from a model folder whose vocabulary is smaller than the tokenizer's.
    small = tmp_path / "small_model"
    AlbertAGPTForCausalLM(tiny_config(vocab_size=300, max_position_embeddings=64)).save_pretrained(small)
    with pytest.raises(ValueError, match="400 tokens .* `vocab_size` 300"):
        train(make_recipe(workspace, tmp_path / "e", model_config=str(small)))
    # ... and from a model folder without a tokenizer, when none is given: a new one would not fit its embeddings.
    with pytest.raises(FileNotFoundError, match="small_model.*has no tokenizer"):
        train(make_recipe(workspace, tmp_path / "h", model_config=str(small), tokenizer=None))

    # A sample prompt that fills the learned positions would fail at the first evaluation: refused before training.
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**TINY_SIZES, "max_position_embeddings": 64}))
    with pytest.raises(ValueError, match=r"`sample_prompt` is \d+ tokens .* `max_position_embeddings` \(64\)"):
        train(make_recipe(workspace, tmp_path / "i", model_config=str(short), sample_prompt="print(x) " * 100))

    # Accelerate would accept fp16 on a CPU and train in fp32 without a word.
    reset_accelerate_state()  # this process's Accelerate state was set up without mixed precision
    with pytest.raises(ValueError, match="`mixed_precision` fp16 needs a GPU"):
        train(make_recipe(workspace, tmp_path / "j", mixed_precision="fp16"))
    reset_accelerate_state()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # as `accelerate launch --mixed_precision fp16` sets it
    with pytest.raises(ValueError, match="`mixed_precision` fp16 needs a GPU"):
        train(make_recipe(workspace, tmp_path / "k", mixed_precision=None))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")

    # A fresh run into a folder that already holds checkpoints would mix two runs.
    (tmp_path / "f" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(ValueError, match="resume_from_checkpoint latest"):
        train(make_recipe(workspace, tmp_path / "f"))


def test_a_damaged_checkpoint_is_named_before_resuming(workspace, reference_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    checkpoint = out / "checkpoint-8"
    shutil.copytree(reference_run / "checkpoint-8", checkpoint)
    manifest = json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text())
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "tokenizer.json"} <= set(manifest)
    verify_checkpoint(checkpoint, Accelerator())  # intact

    # A lost RNG state would otherwise resume without a word, and not exactly.
    (checkpoint / "random_states_0.pkl").unlink()
    with pytest.raises(ValueError, match=r"checkpoint-8 is damaged: random_states_0.pkl is missing"):
        train(make_recipe(workspace, out, resume_from_checkpoint="latest"))
    shutil.copy(reference_run / "checkpoint-8" / "random_states_0.pkl", checkpoint)
    weights = checkpoint / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:100])
    with pytest.raises(ValueError, match=r"model.safetensors has 100 bytes instead of \d+"):
        train(make_recipe(workspace, out, resume_from_checkpoint=str(checkpoint)))
    # One flipped bit in a weight: the same size, and safetensors would load it without a word.
    weights.write_bytes(intact[:-1] + bytes([intact[-1] ^ 1]))
    with pytest.raises(ValueError, match=r"model.safetensors has other content than when it was written"):
        train(make_recipe(workspace, out, resume_from_checkpoint=str(checkpoint)))
    # A damaged file list is named too.
    (checkpoint / CHECKPOINT_MANIFEST).write_text('{"model.safetensors": {"by')
    with pytest.raises(ValueError, match=r"checkpoint-8 is damaged: its file list checkpoint_files.json is not JSON"):
        verify_checkpoint(checkpoint, Accelerator())
    # A manifest of an earlier version holds sizes only: those are still checked.
    sizes_only = {name: entry["bytes"] for name, entry in manifest.items()}
    (checkpoint / CHECKPOINT_MANIFEST).write_text(json.dumps(sizes_only))
    verify_checkpoint(checkpoint, Accelerator())
    weights.write_bytes(intact[:100])
    with pytest.raises(ValueError, match=r"model.safetensors has 100 bytes instead of \d+"):
        verify_checkpoint(checkpoint, Accelerator())


def test_processes_verifying_a_checkpoint_hash_each_file_once(reference_run, monkeypatch):
    checkpoint = reference_run / "checkpoint-8"
    hashed = []
    real_sha256 = albertagpt.checkpointing.file_sha256
    monkeypatch.setattr(
        albertagpt.checkpointing, "file_sha256", lambda path: hashed.append(path.name) or real_sha256(path)
    )
    shares = []
    for process in range(3):
        assert checkpoint_problem(checkpoint, process, 3) is None
        shares.append(set(hashed))
        hashed.clear()
    assert sorted(name for share in shares for name in share) == sorted(
        json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text())
    )
    sizes = [sum((checkpoint / name).stat().st_size for name in share) for share in shares]
    assert max(sizes) == (checkpoint / "optimizer.bin").stat().st_size  # the largest file alone; the others share


def test_resuming_with_another_recipe_names_what_changed(workspace, reference_run, tmp_path, capsys):
    saved = asdict(make_recipe(workspace, tmp_path / "run"))
    changed = make_recipe(workspace, tmp_path / "run", block_size=16, learning_rate=5e-3, logging_steps=1)
    # Reporting fields (logging, evaluation) may change; the others are named, split by what the checkpoint restores.
    assert recipe_changes(saved, changed) == {
        "restored": ["learning_rate: 0.01 -> 0.005"],
        "applied": ["block_size: 32 -> 16"],
    }
    assert recipe_changes(saved, make_recipe(workspace, tmp_path / "run", logging_steps=1)) == {
        "restored": [],
        "applied": [],
    }

    # The checkpoint holds the recipe it was written with, and the warning tells the truth: a new learning rate is
    # ignored (the optimizer and scheduler states restore the old one), so the run still ends where the reference
    # run does.
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(reference_run / "checkpoint-4", out / "checkpoint-4")
    assert json.loads((out / "checkpoint-4" / "training_recipe.json").read_text())["learning_rate"] == 1e-2
    capsys.readouterr()
    train(make_recipe(workspace, out, resume_from_checkpoint="latest", learning_rate=5e-3))
    printed = capsys.readouterr().out
    assert (
        "Taking effect: nothing. Ignored, restored from the checkpoint: learning_rate: 0.01 -> 0.005. "
        "The run still matches an uninterrupted one." in printed
    )
    assert max_weight_difference(out, reference_run) <= 1e-6


def subclasses(recipe_type: type) -> list[type]:
    return [sub for child in recipe_type.__subclasses__() for sub in (child, *subclasses(child))]


def test_every_recipe_field_declares_what_it_does_on_resume():
    import albertagpt.lab
    import albertagpt.quality  # noqa: F401  (their recipes extend TrainingRecipe)

    recipes = [TrainingRecipe, *subclasses(TrainingRecipe)]
    assert {"SweepRecipe", "QualityRecipe"} <= {recipe.__name__ for recipe in recipes}
    undeclared = [
        f"{recipe.__name__}.{item.name}"
        for recipe in recipes
        for item in fields(recipe)
        if not isinstance(item.metadata.get("on_resume"), OnResume)
    ]
    assert undeclared == []

    # The comparison reads each field's declaration; a field without one is refused rather than assumed to take effect.
    @dataclass
    class Extended(TrainingRecipe):
        restored_knob: int = recipe_field(0, on_resume=OnResume.RESTORED)
        reporting_knob: int = recipe_field(0, on_resume=OnResume.REPORTING)

    saved = {**asdict(Extended()), "restored_knob": 1, "reporting_knob": 1}
    assert recipe_changes(saved, Extended()) == {"restored": ["restored_knob: 1 -> 0"], "applied": []}

    @dataclass
    class Undeclared(TrainingRecipe):
        new_knob: int = 0

    with pytest.raises(TypeError, match="`new_knob` declares no `on_resume`"):
        recipe_changes(asdict(Undeclared()), Undeclared())


def test_the_model_config_fields_a_resume_may_change_exist():
    # Every other field of the config must be the checkpoint's: a misspelt name here would compare a field meant
    # to change, and a removed one would leave a stale entry.
    for config_type in (AlbertAGPTConfig, GPT2Config):  # the loop trains both (the quality benchmark trains GPT-2)
        assert set(CONFIG_FIELDS_A_RESUME_MAY_CHANGE) <= set(config_type.__annotations__), config_type


def saved_progress(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)  # registered first


def test_checkpoints_keep_the_evaluations_a_run_reports(reference_run):
    evaluations = [row for row in read_metrics(reference_run / "metrics.jsonl") if "eval_loss" in row]
    assert [row["step"] for row in evaluations] == [0, 4, 8]
    middle, last = saved_progress(reference_run / "checkpoint-4"), saved_progress(reference_run / "checkpoint-8")
    assert middle["initial_eval_loss"] == last["initial_eval_loss"] == evaluations[0]["eval_loss"]
    assert middle["final_eval_loss"] is None
    assert (last["step"], last["final_eval_loss"]) == (8, evaluations[-1]["eval_loss"])
    assert last["final_sample"] == evaluations[-1]["sample"]


def predating_the_kept_evaluations(checkpoint: Path) -> None:
    """Makes `checkpoint` one written before its progress held the evaluations (manifest rewritten to match)."""
    progress = saved_progress(checkpoint)
    for name in ("initial_eval_loss", "final_eval_loss", "final_sample"):
        del progress[name]
    torch.save(progress, checkpoint / "custom_checkpoint_0.pkl")
    (checkpoint / CHECKPOINT_MANIFEST).unlink()
    write_manifest(checkpoint)


def test_a_checkpoint_from_before_the_kept_evaluations_resumes(workspace, reference_run, tmp_path):
    reference_rows = read_metrics(reference_run / "metrics.jsonl")
    final_row = reference_rows[-1]
    assert final_row["step"] == 8 and "eval_loss" in final_row

    def without_speed(rows: list[dict]) -> list[dict]:
        return [{key: value for key, value in row.items() if key != "tokens_per_second"} for row in rows]

    # In the middle of the run: trained to the end, its final evaluation is kept; the initial one is unknown.
    out = tmp_path / "middle"
    out.mkdir()
    shutil.copytree(reference_run / "checkpoint-4", out / "checkpoint-4")
    predating_the_kept_evaluations(out / "checkpoint-4")
    shutil.copy(reference_run / "metrics.jsonl", out / "metrics.jsonl")
    result = train(make_recipe(workspace, out, resume_from_checkpoint="latest"))
    assert result.initial_eval_loss is None
    assert result.final_eval_loss == final_row["eval_loss"] and result.sample == final_row["sample"]
    assert saved_progress(out / "checkpoint-8")["final_eval_loss"] == final_row["eval_loss"]
    assert without_speed(read_metrics(out / "metrics.jsonl")) == without_speed(reference_rows)
    assert max_weight_difference(out, reference_run) <= 1e-6

    # At `max_steps`, killed before its final evaluation: resuming evaluates the final model and logs it, once.
    out = tmp_path / "finished"
    out.mkdir()
    shutil.copytree(reference_run / "checkpoint-8", out / "checkpoint-8")
    predating_the_kept_evaluations(out / "checkpoint-8")
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in reference_rows[:-1]))
    reset_accelerate_state()
    result = train(make_recipe(workspace, out, resume_from_checkpoint="latest"))
    assert result.initial_eval_loss is None
    assert result.final_eval_loss == final_row["eval_loss"] and result.sample == final_row["sample"]
    assert read_metrics(out / "metrics.jsonl") == reference_rows
    assert max_weight_difference(out, reference_run) <= 1e-6


LOAD_FOLDERS = """
import torch
from transformers import AutoModelForCausalLM
results = {}
for folder in FOLDERS:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.arange(3 * 32).reshape(3, 32) * 7 % model.config.vocab_size
    with torch.no_grad():
        results[folder] = {"module": type(model).__module__, "logits": model(input_ids=ids).logits.tolist()}
print(json.dumps(results))
"""


def test_checkpoints_and_the_final_model_carry_their_remote_code(reference_run, tmp_path):
    folders = [reference_run / "checkpoint-4", reference_run / "checkpoint-8", reference_run]
    for folder in folders:
        assert "auto_map" in json.loads((folder / "config.json").read_text())
        for name in ("configuration_albertagpt.py", "modeling_albertagpt.py"):  # the package's own files
            assert (folder / name).read_bytes() == (REPO_ROOT / "albertagpt" / name).read_bytes()
    # The checkpoints are intact with the code: it is written before the file list.
    manifest = json.loads((reference_run / "checkpoint-8" / CHECKPOINT_MANIFEST).read_text())
    assert {"configuration_albertagpt.py", "modeling_albertagpt.py"} <= set(manifest)

    code = f"FOLDERS = {json.dumps([str(folder) for folder in folders])}\n" + LOAD_FOLDERS
    loaded = run_without_package(code, tmp_path / "hub_cache", tmp_path)
    final_logits = fixed_batch_logits(reference_run)
    for folder in folders:
        assert loaded[str(folder)]["module"].startswith("transformers_modules.")  # the folder's code, not the package
        expected = fixed_batch_logits(folder)
        assert torch.equal(torch.tensor(loaded[str(folder)]["logits"], dtype=expected.dtype), expected)
    assert torch.equal(fixed_batch_logits(reference_run / "checkpoint-8"), final_logits)


def test_resuming_another_architecture_or_past_max_steps_is_refused(workspace, reference_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference_run / "checkpoint-8", out / "checkpoint-8")
    # A shared block applied twice as often has weights of the same shapes: it would load, and train another model.
    deeper = tmp_path / "deeper.json"
    deeper.write_text(json.dumps({**TINY_SIZES, "hidden_dropout_prob": 0.1, "num_hidden_layers": 8}))
    with pytest.raises(ValueError, match=r"config differs .*num_hidden_layers: 4 -> 8"):
        train(make_recipe(workspace, out, resume_from_checkpoint="latest", model_config=str(deeper)))
    # No false alarms: a field the saved config lacks (written before the field existed) takes its default, and the
    # initialization is irrelevant to weights that come from the checkpoint.
    saved = json.loads((out / "checkpoint-8" / "config.json").read_text())
    del saved["norm_type"]
    legacy = tmp_path / "legacy-checkpoint"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps(saved))
    check_model_config(legacy, AlbertAGPTConfig(**{**saved, "initializer_range": 0.5}))
    reset_accelerate_state()
    with pytest.raises(ValueError, match=r"checkpoint-8 is at step 8, beyond `max_steps` \(6\)"):
        train(make_recipe(workspace, out, resume_from_checkpoint="latest", max_steps=6))


def test_a_run_killed_in_its_final_evaluation_logs_it_when_resumed(workspace, reference_run, tmp_path, monkeypatch):
    real_evaluate = albertagpt.training.evaluate
    calls = []

    def killed_in_the_final_evaluation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # steps 0 and 4, then the final one, before checkpoint-8 is written
            raise KeyboardInterrupt("killed during the final evaluation")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(albertagpt.training, "evaluate", killed_in_the_final_evaluation)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(make_recipe(workspace, out))
    monkeypatch.undo()
    assert latest_checkpoint(out) == out / "checkpoint-4"  # the last checkpoint holds the final evaluation
    # A write cut short (a kill, a full disk) leaves a torn last row; the resumed run drops it.
    with (out / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 8, "eval_loss": 5.9, "perpl')

    reset_accelerate_state()
    train(make_recipe(workspace, out, resume_from_checkpoint="latest"))

    def without_speed(path: Path) -> list[dict]:
        return [{key: value for key, value in row.items() if key != "tokens_per_second"} for row in read_metrics(path)]

    # The reference run's rows, the final evaluation included, and nothing of the torn row.
    assert without_speed(out / "metrics.jsonl") == without_speed(reference_run / "metrics.jsonl")
    assert max_weight_difference(out, reference_run) <= 1e-6


def test_a_torn_metrics_row_is_dropped_only_at_the_end(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 2, "loss": 6.0}\n{"step": 4, "lo')
    assert read_metrics(metrics) == [{"step": 2, "loss": 6.0}]
    metrics.write_text('{"step": 2, "lo\n{"step": 4, "loss": 5.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1, is not a JSON row"):
        read_metrics(metrics)


@pytest.mark.parametrize("failing", ["weights", "file list"])
def test_a_failed_checkpoint_write_is_named_and_removed(workspace, tmp_path, monkeypatch, failing):
    real_save_state, real_write_manifest = Accelerator.save_state, albertagpt.checkpointing.write_manifest

    def disk_full_in_the_weights(self, output_dir, **kwargs):
        if output_dir.endswith("checkpoint-8"):
            Path(output_dir).mkdir()
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 782016 vs 781904")
        return real_save_state(self, output_dir, **kwargs)

    def disk_full_in_the_file_list(folder):
        if folder.name.endswith("checkpoint-8"):
            raise OSError(28, "No space left on device")
        real_write_manifest(folder)

    if failing == "weights":
        monkeypatch.setattr(Accelerator, "save_state", disk_full_in_the_weights)
    else:
        monkeypatch.setattr(albertagpt.checkpointing, "write_manifest", disk_full_in_the_file_list)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"Writing checkpoint-8 failed \(.*(unexpected pos|No space).*\); \d+ MiB"):
        train(make_recipe(workspace, out))
    assert not (out / ".tmp-checkpoint-8").exists()  # its space is free again
    assert latest_checkpoint(out) == out / "checkpoint-4"


LOCK_HOLDER = """
import fcntl, sys, time
lock = open(sys.argv[1], "w")
fcntl.flock(lock, fcntl.LOCK_EX)
print("holding", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_the_same_output_dir_is_refused(workspace, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # Another process holds the lock of `out`, as a run writing into it does.
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out / ".train.lock")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"holding\n"
        with pytest.raises(RuntimeError, match="Another run is writing into `output_dir`"):
            train(make_recipe(workspace, out))
        assert not (out / "metrics.jsonl").exists()  # stopped before writing anything
    finally:
        holder.kill()
        holder.wait()
    reset_accelerate_state()
    train(make_recipe(workspace, out, max_steps=2, eval_steps=2, checkpointing_steps=2))  # free once its holder ends
    assert [path.name for path in list_checkpoints(out)] == ["checkpoint-2"]


def test_resuming_with_another_number_of_processes_warns(tmp_path, capsys):
    for rank in range(2):
        (tmp_path / f"random_states_{rank}.pkl").write_bytes(b"")
    warn_about_process_count(Accelerator(), tmp_path)
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().out


def test_held_out_loss_ignores_the_tokens_the_collator_ignores():
    torch.manual_seed(0)
    model = AlbertAGPTForCausalLM(tiny_config())
    input_ids = torch.randint(3, 97, (3, 16))
    labels = input_ids.clone()
    labels[:, ::5] = -100  # what the collator writes where the pad id is also the eos id
    batches = [{"input_ids": input_ids[:2], "labels": labels[:2]}, {"input_ids": input_ids[2:], "labels": labels[2:]}]
    with torch.no_grad():
        expected = model(input_ids=input_ids, labels=labels).loss.item()  # the mean over predicted tokens
    assert evaluate(model, batches, Accelerator(), max_batches=None) == pytest.approx(expected, rel=1e-5)


def test_unigram_loss_is_the_entropy_of_the_scored_tokens():
    labels = torch.tensor([[9, 5, 5, -100, 7], [9, 5, 7, 7, -100]])
    batches = [{"labels": labels[:1]}, {"labels": labels[1:]}]
    # Scored: the labels after the first position, -100 left out: 5, 5, 7 and 5, 7, 7.
    assert held_out_unigram_loss(batches, Accelerator(), max_batches=None, vocab_size=10) == pytest.approx(math.log(2))
    assert held_out_unigram_loss(batches, Accelerator(), max_batches=1, vocab_size=10) == pytest.approx(
        -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    )


def test_a_run_at_the_unigram_loss_after_warm_up_is_warned_about(capsys):
    recipe = TrainingRecipe(warmup_steps=100)
    warn_about_unigram_plateau(Accelerator(), 100, 5.3, 5.2, recipe)  # still warming up
    warn_about_unigram_plateau(Accelerator(), 200, 4.9, 5.2, recipe)  # learned more than token frequencies
    assert capsys.readouterr().out == ""
    warn_about_unigram_plateau(Accelerator(), 200, 5.21, 5.2, recipe)
    assert (
        "at step 200 the held-out loss (5.210) is no better than the unigram loss (5.200)" in capsys.readouterr().out
    )


def test_gradient_accumulation_other_than_the_recipe_is_refused():
    accelerator = Accelerator(gradient_accumulation_steps=1)  # what a DeepSpeed config of 1 leaves
    check_gradient_accumulation(accelerator, 1)
    with pytest.raises(ValueError, match="`gradient_accumulation_steps` to 1, the recipe to 4"):
        check_gradient_accumulation(accelerator, 4)


def test_a_single_value_for_a_list_field_is_a_list_of_one(tmp_path):
    recipe_file = tmp_path / "single.yaml"
    recipe_file.write_text("train_files: data/a.txt\nreport_to: none\nmixed_precision: no\n")
    recipe = parse_recipe(TrainingRecipe, ["--config", str(recipe_file)])
    assert (recipe.train_files, recipe.report_to, recipe.mixed_precision) == (["data/a.txt"], ["none"], "no")
    assert load_recipe(TrainingRecipe, None, train_files="data/a.txt").train_files == ["data/a.txt"]


def test_numbers_pyyaml_reads_as_text_are_numbers_in_number_fields_only(tmp_path):
    # PyYAML reads `1e-3` as a string (YAML 1.1 floats need a dot). Number fields take it as a number, in Python as on
    # the command line (argparse converts it); text fields keep it as text.
    recipe_file = tmp_path / "numbers.yaml"
    recipe_file.write_text("learning_rate: 1e-3\nmax_steps: '20'\noutput_dir: 1e3\nsample_prompt: 6e23\n")
    for recipe in (
        load_recipe(TrainingRecipe, recipe_file),
        parse_recipe(TrainingRecipe, ["--config", str(recipe_file)]),
    ):
        assert (recipe.learning_rate, recipe.max_steps) == (1e-3, 20)
        assert (recipe.output_dir, recipe.sample_prompt) == ("1e3", "6e23")
    with pytest.raises(ValueError, match="`learning_rate` must be a number, got 'fast'"):
        load_recipe(TrainingRecipe, None, learning_rate="fast")


def test_recipes_load_and_unknown_fields_are_named(tmp_path):
    tiny = REPO_ROOT / "configs/train/tiny.yaml"
    base = load_recipe(TrainingRecipe, REPO_ROOT / "configs/train/base.yaml")
    assert (base.model_config, base.resume_from_checkpoint) == ("base", "latest")
    for switched_off in ("none", ""):  # the recipe's `latest`, switched off on the command line
        recipe = parse_recipe(TrainingRecipe, ["--config", str(tiny), "--resume_from_checkpoint", switched_off])
        assert recipe.resume_from_checkpoint is None
    recipe = parse_recipe(
        TrainingRecipe,
        ["--config", str(tiny), "--max_steps", "7", "--learning_rate", "1e-4", "--train_files", "a.txt", "b.txt"]
        + ["--report_to", "none", "--streaming", "true"],
    )
    assert (recipe.max_steps, recipe.learning_rate, recipe.train_files) == (7, 1e-4, ["a.txt", "b.txt"])
    assert recipe.report_to == ["none"] and recipe.streaming is True
    assert recipe.block_size == yaml.safe_load(tiny.read_text())["block_size"]  # the rest comes from the YAML
    with pytest.raises(ValueError, match="'max_step'"):
        parse_recipe(TrainingRecipe, ["--config", str(tiny), "--max_step", "5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 5\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="'learning_rat'"):
        parse_recipe(TrainingRecipe, ["--config", str(bad)])
    with pytest.raises(ValueError, match="'warmup'"):
        load_recipe(TrainingRecipe, tiny, warmup=3)
    # The script turns it into a one-line error and a non-zero exit status.
    completed = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", str(tiny), "--no_such_field", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode != 0 and "'no_such_field'" in completed.stderr


def test_accelerate_configs_load_and_fsdp_wraps_the_shared_block():
    kinds = {}
    for path in sorted((REPO_ROOT / "configs/accelerate").glob("*.yaml")):
        assert path.read_text().startswith("#"), f"{path.name} must say when to use it"
        kinds[path.stem] = load_config_from_file(str(path))
    assert set(kinds) == {"single_gpu", "multi_gpu", "multi_node", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}
    assert kinds["multi_node"].num_machines > 1
    for stage in (2, 3):
        deepspeed = kinds[f"deepspeed_zero{stage}"].deepspeed_config
        assert deepspeed["zero_stage"] == stage
        assert "gradient_accumulation_steps" not in deepspeed  # left out so that Accelerate passes the recipe's
    fsdp = kinds["fsdp"].fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert tuple(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")) == FSDP_UNIT_CLASSES


def test_fsdp2_wrap_plan_on_two_cpu_processes_matches_one(tmp_path):
    completed = run_torchrun("tests/fsdp2_worker.py", str(tmp_path), tmp_path=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["groups_are_units"] == [True, True] and plan["root_is_unit"] and plan["embeddings_are_not_a_unit"]
    assert plan["tied"] and plan["sharded"]
    assert plan["local_rows"] == 49  # each rank holds half of the 97-token embedding (rounded up)

    reference = fsdp_test_model()
    batches = global_batches(reference.config.vocab_size)
    train_steps(reference, batches)
    sharded = fsdp_test_model()
    sharded.load_state_dict(torch.load(tmp_path / "weights.pt"))
    probe = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(
            sharded(input_ids=probe).logits, reference(input_ids=probe).logits, rtol=0, atol=1e-4
        )
    # The comparison has teeth: three steps moved the weights far more than the tolerance.
    with torch.no_grad():
        assert (fsdp_test_model()(input_ids=probe).logits - reference(input_ids=probe).logits).abs().max() > 1e-2


def test_a_run_continued_past_max_steps_reports_its_own_final_evaluation(workspace, tmp_path):
    """A run trained to 4 steps, continued to 8: its checkpoint at 6 must not carry the step-4 final evaluation, so
    that resuming it as the end of a 6-step run evaluates the step-6 model."""
    output_dir = tmp_path / "run"
    common = dict(eval_steps=2, checkpointing_steps=2, save_total_limit=None)
    first = train(make_recipe(workspace, output_dir, max_steps=4, **common))
    train(make_recipe(workspace, output_dir, max_steps=8, resume_from_checkpoint="latest", **common))
    at_step = {
        row["step"]: row["eval_loss"] for row in read_metrics(output_dir / "metrics.jsonl") if "eval_loss" in row
    }
    resumed = train(
        make_recipe(
            workspace, output_dir, max_steps=6, resume_from_checkpoint=str(output_dir / "checkpoint-6"), **common
        )
    )
    assert first.final_eval_loss == pytest.approx(at_step[4])
    assert resumed.final_eval_loss == pytest.approx(at_step[6]) and at_step[6] != pytest.approx(at_step[4])


def test_a_malformed_manifest_or_unreadable_file_is_a_verdict_not_an_exception(tmp_path):
    """Each process checks its share and then waits for the others' verdicts: an exception on one process would
    leave the others waiting, so every failure must come back as a problem."""
    (tmp_path / "weights.bin").write_bytes(b"12345")
    manifest = tmp_path / CHECKPOINT_MANIFEST
    manifest.write_text(json.dumps({"weights.bin": {"bytes": 5}}))  # no sha256
    assert "is damaged (KeyError" in checkpoint_problem(tmp_path)
    manifest.write_text(json.dumps(["weights.bin"]))
    assert "is damaged (AttributeError" in checkpoint_problem(tmp_path)
    (tmp_path / "weights.bin").unlink()
    (tmp_path / "weights.bin").mkdir()  # a size but no readable content
    manifest.write_text(
        json.dumps({"weights.bin": {"bytes": (tmp_path / "weights.bin").stat().st_size, "sha256": "0"}})
    )
    assert checkpoint_problem(tmp_path).startswith("weights.bin ")
