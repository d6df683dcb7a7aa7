"""The LayerNorm lab's experiments: the usable-LR computation on a synthetic table, the sweep end to end through the
training loop, and the training loop's `diagnostics` option."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import TINY_SIZES, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoTokenizer

from albertagpt import AlbertAGPTForCausalLM
from albertagpt.data import builtin_corpus, load_text_splits, pack_into_blocks
from albertagpt.lab import (
    SweepRecipe,
    SweepRun,
    depth_profile,
    format_ranges,
    format_sweep_report,
    read_csv,
    run_sweep,
    training_blocks_loss,
    usable_lr_ranges,
    write_csv,
)
from albertagpt.tokenizer import train_tokenizer
from albertagpt.training import TrainingRecipe, read_metrics, train

GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
NAN = float("nan")


def sweep_run(variant: str, learning_rate: float, loss: float, warmup_steps: int = 10) -> SweepRun:
    diverged = loss != loss or loss >= 8.0
    return SweepRun(variant, learning_rate, warmup_steps, 8.0, loss, loss - 0.1, diverged, 1.0)


def test_usable_range_is_the_contiguous_span_within_tolerance_of_the_best() -> None:
    runs = [
        # best 4.4 at 3e-3, limit 4.84: 3e-4 .. 3e-3 qualify; 1e-2 does not, so 3e-2 (4.6) is cut off the span
        *(sweep_run("post", lr, loss) for lr, loss in zip(GRID, [6.0, 4.7, 4.5, 4.4, 4.9, 4.6], strict=True)),
        # diverged runs (non-finite, or no better than the start) never count
        *(sweep_run("none", lr, loss) for lr, loss in zip(GRID, [5.0, 4.8, NAN, 8.5, NAN, NAN], strict=True)),
        *(sweep_run("post", lr, loss, warmup_steps=0) for lr, loss in zip(GRID, [NAN] * 6, strict=True)),
    ]
    post, post_no_warmup, none = usable_lr_ranges(runs, tolerance=0.1)

    assert (post.variant, post.warmup_steps, post.best_learning_rate, post.best_loss) == ("post", 10, 3e-3, 4.4)
    assert (post.low, post.high, post.diverged) == (3e-4, 3e-3, [])
    assert post.decades == pytest.approx(1.0)
    assert post.generalization_gap == pytest.approx(0.1)

    assert (post_no_warmup.warmup_steps, post_no_warmup.best_learning_rate, post_no_warmup.decades) == (0, None, 0.0)
    assert post_no_warmup.diverged == GRID

    assert (none.best_learning_rate, none.low, none.high) == (3e-4, 1e-4, 3e-4)
    assert none.diverged == GRID[2:]

    narrow = usable_lr_ranges(runs, tolerance=0.05)[0]  # limit 4.62: 3e-4 (4.7) drops out
    assert (narrow.low, narrow.high) == (1e-3, 3e-3)

    # Against the best run of all variants (4.4): none's best (4.8) stays within 10%, alone; within 5% it does not.
    across = usable_lr_ranges(runs, tolerance=0.1, across_variants=True)
    assert [(r.variant, r.low, r.high) for r in across] == [
        ("post", 3e-4, 3e-3),
        ("post", None, None),
        ("none", 3e-4, 3e-4),
    ]
    none_within_5 = usable_lr_ranges(runs, tolerance=0.05, across_variants=True)[2]
    assert (none_within_5.best_learning_rate, none_within_5.low, none_within_5.decades) == (3e-4, None, 0.0)

    table = format_ranges([post, post_no_warmup, none], 0.1).splitlines()
    assert table[2] == "| post | 10 | 0.003 | 4.400 | 0.0003 - 0.003 | 1.0 | - | +0.100 |"
    assert table[3].startswith("| post | 0 | - | - | none | 0.0 | 0.0001, 0.0003, 0.001")


def test_sweep_table_round_trips_through_csv(tmp_path: Path) -> None:
    runs = [sweep_run("post", 1e-3, 4.5), sweep_run("none", 1e-2, NAN, warmup_steps=0)]
    write_csv(runs, tmp_path / "sweep.csv")
    assert repr(read_csv(tmp_path / "sweep.csv")) == repr(runs)  # repr: NaN != NaN


def test_sweep_recipe_checks_its_grid() -> None:
    assert SweepRecipe(min_learning_rate=1e-3, max_learning_rate=1e-1, learning_rate_points=3).learning_rates() == [
        1e-3,
        1e-2,
        1e-1,
    ]
    with pytest.raises(ValueError, match="'post-groupnorm'"):
        SweepRecipe(variants=["post-groupnorm"])
    with pytest.raises(ValueError, match="`min_learning_rate`"):
        SweepRecipe(min_learning_rate=1e-1, max_learning_rate=1e-3)
    with pytest.raises(ValueError, match="One learning-rate point"):
        SweepRecipe(min_learning_rate=1e-3, max_learning_rate=1e-1, learning_rate_points=1)
    assert SweepRecipe(min_learning_rate=1e-3, max_learning_rate=1e-3, learning_rate_points=1).learning_rates() == [
        1e-3
    ]
    with pytest.raises(ValueError, match="repeats values"):
        SweepRecipe(min_learning_rate=1e-3, max_learning_rate=1.001e-3, learning_rate_points=2)
    with pytest.raises(ValueError, match="lists a variant twice"):
        SweepRecipe(variants=["none", "none"])
    with pytest.raises(ValueError, match="`variants` is empty"):
        SweepRecipe(variants=[])
    with pytest.raises(ValueError, match="< inf"):
        SweepRecipe(max_learning_rate=math.inf)
    for tolerance in (math.nan, math.inf, 0.0):  # NaN would make no run usable, inf every run
        with pytest.raises(ValueError, match="`tolerance` must be a positive finite fraction"):
            SweepRecipe(tolerance=tolerance)
    assert SweepRecipe(warmup_steps=5).warmups() == [5, 0]
    assert SweepRecipe(warmup_steps=5, compare_warmup=False).warmups() == [5]


# --- through the training loop ----------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lab")
    documents = [text[:1500] for text in builtin_corpus("train")[:30]]
    (root / "corpus.txt").write_text("\n\n".join(text.replace("\n\n", "\n") for text in documents))
    train_tokenizer(documents, vocab_size=300).save_pretrained(root / "tokenizer")
    (root / "model.json").write_text(json.dumps(TINY_SIZES))
    return root


def recipe_fields(workspace: Path, output_dir: Path) -> dict:
    return dict(
        output_dir=str(output_dir),
        model_config=str(workspace / "model.json"),
        tokenizer=str(workspace / "tokenizer"),
        train_files=[str(workspace / "corpus.txt")],
        validation_split_percentage=10,
        block_size=32,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=4,
        warmup_steps=1,
        logging_steps=2,
        eval_steps=4,
        checkpointing_steps=4,
        max_eval_batches=2,
        report_to=["none"],
        sample_max_new_tokens=1,
    )


def test_a_run_whose_last_update_diverges_is_recorded_and_the_sweep_goes_on(workspace: Path, tmp_path: Path) -> None:
    # One step at LR 1000 without warm-up: its loss was finite when checked, the weights after it are not, and the
    # final evaluation finds out (its sample generation used to crash the whole sweep).
    fields = {**recipe_fields(workspace, tmp_path), "max_steps": 1, "warmup_steps": 0, "eval_steps": 1}
    grid = dict(min_learning_rate=1e-2, max_learning_rate=1e3, learning_rate_points=2, compare_warmup=False)
    runs, _ = run_sweep(SweepRecipe(**fields, **grid, variants=["none"], processes=1))
    assert [(run.learning_rate, run.diverged) for run in runs] == [(0.01, False), (1000.0, True)]
    assert math.isnan(runs[1].final_eval_loss)
    assert "Non-finite held-out loss" in (tmp_path / "runs" / "none_lr1000_warmup0" / "train.log").read_text()
    assert (tmp_path / "usable_lr.md").is_file()


def test_sweep_runs_the_grid_through_the_training_loop(workspace: Path, tmp_path: Path) -> None:
    grid = dict(min_learning_rate=1e-2, max_learning_rate=1e3, learning_rate_points=2, compare_warmup=False)
    recipe = SweepRecipe(
        **recipe_fields(workspace, tmp_path), **grid, variants=["post-layernorm", "none"], processes=1
    )
    runs, ranges = run_sweep(recipe)

    assert [(run.variant, run.learning_rate) for run in runs] == [
        ("post-layernorm", 0.01),
        ("post-layernorm", 1000.0),
        ("none", 0.01),
        ("none", 1000.0),
    ]
    for run in runs:
        if run.learning_rate == 0.01:
            assert not run.diverged and run.final_eval_loss < run.initial_eval_loss, run
        else:  # a learning rate of 1000 wrecks either model
            assert run.diverged, run
    assert [(r.variant, r.best_learning_rate, r.diverged) for r in ranges] == [
        ("post-layernorm", 0.01, [1000.0]),
        ("none", 0.01, [1000.0]),
    ]
    assert repr(read_csv(tmp_path / "sweep.csv")) == repr(runs)
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "usable_lr.md").read_text() == format_sweep_report(runs, 0.1)
    assert format_ranges(ranges, 0.1) in format_sweep_report(runs, 0.1)
    run_dirs = sorted((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 4
    assert json.loads((tmp_path / "configs" / "none.json").read_text())["norm_position"] == "none"
    for run_dir in run_dirs:
        assert (run_dir / "metrics.jsonl").is_file() and not list(run_dir.glob("checkpoint-*"))


@pytest.mark.parametrize("max_eval_batches", [None, 1])
def test_training_loss_reads_as_many_blocks_as_the_held_out_evaluation(
    workspace: Path, tmp_path: Path, max_eval_batches: int | None
) -> None:
    recipe = TrainingRecipe(**{**recipe_fields(workspace, tmp_path), "max_eval_batches": max_eval_batches})
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    model = AlbertAGPTForCausalLM(tiny_config(vocab_size=len(tokenizer)))
    splits = load_text_splits(recipe)
    held_out = len(pack_into_blocks(splits["validation"], tokenizer, recipe.block_size))
    count = held_out if max_eval_batches is None else recipe.per_device_eval_batch_size
    assert held_out > recipe.per_device_eval_batch_size  # the two cases differ
    first_blocks = torch.tensor(pack_into_blocks(splits["train"], tokenizer, recipe.block_size)["input_ids"][:count])
    with torch.no_grad():
        expected = model(input_ids=first_blocks, labels=first_blocks).loss.item()
        assert training_blocks_loss(recipe, model, tokenizer) == pytest.approx(expected, rel=1e-5)


def test_training_with_diagnostics_logs_them_to_metrics_and_tensorboard(workspace: Path, tmp_path: Path) -> None:
    recipe = TrainingRecipe(**{**recipe_fields(workspace, tmp_path), "report_to": ["tensorboard"]}, diagnostics=True)
    train(recipe)
    rows = [row for row in read_metrics(tmp_path / "metrics.jsonl") if "loss" in row]
    assert [row["step"] for row in rows] == [2, 4]
    for row in rows:
        for application in range(4):
            assert row[f"diagnostics/application_{application:02d}/residual_grad_norm"] > 0
            # post-LN: every application ends in a LayerNorm with gamma near 1 after a few small steps
            assert row[f"diagnostics/application_{application:02d}/output_rms"] == pytest.approx(1.0, abs=0.05)
        for group in range(2):
            assert row[f"diagnostics/group_{group}/grad_norm"] > 0
            assert 0 < row[f"diagnostics/group_{group}/update_to_weight"] < 1
    profile = depth_profile(tmp_path / "metrics.jsonl")  # the last recorded step, application by application
    assert profile.step == 4
    assert profile.output_rms == [rows[-1][f"diagnostics/application_{i:02d}/output_rms"] for i in range(4)]
    assert (
        profile.grad_ratio
        == rows[-1]["diagnostics/application_00/residual_grad_norm"]
        / rows[-1]["diagnostics/application_03/residual_grad_norm"]
    )
    assert depth_profile(tmp_path / "metrics.jsonl", step=2).step == 2
    with pytest.raises(ValueError, match="at step 3"):
        depth_profile(tmp_path / "metrics.jsonl", step=3)
    event_files = (tmp_path / "tensorboard").rglob("events.out.tfevents.*")
    scalars = {tag for file in event_files for tag in EventAccumulator(str(file)).Reload().Tags()["scalars"]}
    assert "diagnostics/group_0/grad_norm" in scalars and "loss" in scalars
