"""The LayerNorm lab's experiments: the usable-LR computation on a synthetic table, the sweep end to end through the
training loop, and the training loop's `diagnostics` option."""

import json
import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import TINY_SIZES, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoTokenizer

import albertagpt.lab
from albertagpt import AlbertAGPTForCausalLM, deepnorm_settings
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
    variant_config,
    write_csv,
)
from albertagpt.tokenizer import train_tokenizer
from albertagpt.training import TrainingRecipe, read_metrics, train

GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
NAN = float("nan")


def sweep_run(
    variant: str, learning_rate: float, loss: float, warmup_steps: int = 10, seed: int = 0, depth: int = 6
) -> SweepRun:
    diverged = loss != loss or loss >= 8.0
    return SweepRun(variant, depth, learning_rate, warmup_steps, seed, 8.0, loss, loss - 0.1, diverged, 0.5, 1.0)


def test_usable_range_is_the_contiguous_span_within_tolerance_of_the_best() -> None:
    runs = [
        # best 4.4 at 3e-3, limit 4.84: 3e-4 .. 3e-3 qualify; 1e-2 does not, so 3e-2 (4.6) is cut off the span
        *(sweep_run("post", lr, loss) for lr, loss in zip(GRID, [6.0, 4.7, 4.5, 4.4, 4.9, 4.6], strict=True)),
        # diverged runs (non-finite, or no better than the start) never count
        *(sweep_run("none", lr, loss) for lr, loss in zip(GRID, [5.0, 4.8, NAN, 8.5, NAN, NAN], strict=True)),
        *(sweep_run("post", lr, loss, warmup_steps=0) for lr, loss in zip(GRID, [NAN] * 6, strict=True)),
    ]
    post, none, post_no_warmup = usable_lr_ranges(runs, tolerance=0.1)

    assert (post.variant, post.warmup_steps, post.best_learning_rate, post.best_loss) == ("post", 10, 3e-3, 4.4)
    assert (post.low, post.high, post.diverged, post.seeds, post.best_loss_std) == (3e-4, 3e-3, [], 1, 0.0)
    assert post.decades == pytest.approx(1.0)
    assert post.generalization_gap == pytest.approx(0.1)
    # Wortsman's LR sensitivity: mean over the grid of min(loss, initial 8.0) - best 4.4
    assert post.lr_sensitivity == pytest.approx((6.0 + 4.7 + 4.5 + 4.4 + 4.9 + 4.6) / 6 - 4.4)
    assert none.lr_sensitivity == pytest.approx((5.0 + 4.8 + 8.0 + 8.0 + 8.0 + 8.0) / 6 - 4.8)

    assert (post_no_warmup.warmup_steps, post_no_warmup.best_learning_rate, post_no_warmup.decades) == (0, None, 0.0)
    assert post_no_warmup.diverged == GRID
    assert math.isnan(post_no_warmup.lr_sensitivity)

    assert (none.best_learning_rate, none.low, none.high) == (3e-4, 1e-4, 3e-4)
    assert none.diverged == GRID[2:]

    narrow = usable_lr_ranges(runs, tolerance=0.05)[0]  # limit 4.62: 3e-4 (4.7) drops out
    assert (narrow.low, narrow.high) == (1e-3, 3e-3)

    # Against the best run of all variants (4.4): none's best (4.8) stays within 10%, alone; within 5% it does not.
    across = usable_lr_ranges(runs, tolerance=0.1, across_variants=True)
    assert [(r.variant, r.low, r.high) for r in across] == [
        ("post", 3e-4, 3e-3),
        ("none", 3e-4, 3e-4),
        ("post", None, None),
    ]
    none_within_5 = usable_lr_ranges(runs, tolerance=0.05, across_variants=True)[1]
    assert (none_within_5.best_learning_rate, none_within_5.low, none_within_5.decades) == (3e-4, None, 0.0)

    table = format_ranges([post, post_no_warmup, none], 0.1).splitlines()
    assert (
        table[2] == "| 6 | post | 10 | 1 | 0.003 | 4.400 ± 0.000 | 0.0003 - 0.003 | 1.0 | - | 0.450 ± 0.000 | +0.100 |"
    )
    assert table[3].startswith("| 6 | post | 0 | 1 | - | - | none | 0.0 | 0.0001, 0.0003, 0.001")


def test_seeds_are_averaged_and_a_learning_rate_with_a_diverged_seed_is_not_usable() -> None:
    losses = {0: [5.0, 4.4, 4.6], 1: [5.2, 4.6, NAN]}  # per seed, over the first three grid points
    runs = [
        sweep_run("post", lr, loss, seed=seed)
        for seed, row in losses.items()
        for lr, loss in zip(GRID[:3], row, strict=True)
    ]
    runs += [sweep_run("post", lr, 4.0, depth=24) for lr in GRID[:2]]  # another depth is another row
    shallow, deep = usable_lr_ranges(runs, tolerance=0.2)
    assert (shallow.num_hidden_layers, shallow.seeds, shallow.best_learning_rate) == (6, 2, 3e-4)
    assert shallow.best_loss == pytest.approx(4.5)
    assert shallow.best_loss_std == pytest.approx(statistics.stdev([4.4, 4.6]))
    assert (shallow.low, shallow.high, shallow.diverged) == (1e-4, 3e-4, [1e-3])
    sensitivities = [(5.0 + 4.4 + 4.6) / 3 - 4.4, (5.2 + 4.6 + 8.0) / 3 - 4.6]
    assert shallow.lr_sensitivity == pytest.approx(statistics.fmean(sensitivities))
    assert shallow.lr_sensitivity_std == pytest.approx(statistics.stdev(sensitivities))
    assert (deep.num_hidden_layers, deep.best_loss, deep.seeds) == (24, 4.0, 1)
    # Across variants the reference is the best of the same depth: 4.0 does not raise the bar at depth 6.
    assert usable_lr_ranges(runs, tolerance=0.2, across_variants=True)[0].low == 1e-4


def test_sweep_table_round_trips_through_csv(tmp_path: Path) -> None:
    runs = [sweep_run("post", 1e-3, 4.5), sweep_run("none", 1e-2, NAN, warmup_steps=0, seed=3, depth=24)]
    write_csv(runs, tmp_path / "sweep.csv")
    assert repr(read_csv(tmp_path / "sweep.csv")) == repr(runs)  # repr: NaN != NaN


def test_variant_names_set_the_norms_and_the_stabilisers() -> None:
    assert variant_config("post-layernorm") == {"norm_position": "post", "norm_type": "layernorm"}
    assert variant_config("post-layernorm-b2t") == {**variant_config("post-layernorm"), "b2t_connection": True}
    assert variant_config("post-layernorm-deepnorm-b2t", 24) == {
        **variant_config("post-layernorm"),
        **deepnorm_settings(24),
        "b2t_connection": True,
    }
    with pytest.raises(ValueError, match="depend on `num_hidden_layers`"):
        variant_config("post-layernorm-deepnorm")
    for name in ("pre-layernorm-b2t", "post-layernorm-b2t-deepnorm", "none-b2t"):
        with pytest.raises(ValueError, match=f"Unknown variant '{name}'"):
            variant_config(name, 6)


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
    for name, values in (("variants", ["none", "none"]), ("seeds", [1, 1]), ("warmups", [0, 0]), ("depths", [6, 6])):
        with pytest.raises(ValueError, match=f"`{name}` lists a value twice"):
            SweepRecipe(**{name: values})
    with pytest.raises(ValueError, match="`variants` is empty"):
        SweepRecipe(variants=[])
    with pytest.raises(ValueError, match="< inf"):
        SweepRecipe(max_learning_rate=math.inf)
    for tolerance in (math.nan, math.inf, 0.0):  # NaN would make no run usable, inf every run
        with pytest.raises(ValueError, match="`tolerance` must be a positive finite fraction"):
            SweepRecipe(tolerance=tolerance)
    with pytest.raises(ValueError, match="`depths` must be positive"):
        SweepRecipe(depths=[0])
    with pytest.raises(ValueError, match="`warmups` must not be negative"):
        SweepRecipe(warmups=[-1])
    assert SweepRecipe(warmup_steps=5).warmup_grid() == [5]
    assert SweepRecipe(warmup_steps=5, warmups=[0, 50]).warmup_grid() == [0, 50]
    assert SweepRecipe(seed=7).seed_grid() == [7]


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
    grid = dict(min_learning_rate=3e-3, max_learning_rate=1e3, learning_rate_points=2)
    runs, _ = run_sweep(SweepRecipe(**fields, **grid, variants=["none"], processes=1))
    assert [(run.learning_rate, run.diverged) for run in runs] == [(0.003, False), (1000.0, True)]
    assert math.isnan(runs[1].final_eval_loss)
    log = tmp_path / "runs" / "L4_none_lr1000_warmup0_seed42" / "train.log"
    assert "Non-finite held-out loss" in log.read_text()
    assert (tmp_path / "usable_lr.md").is_file()


def test_sweep_runs_the_grid_through_the_training_loop_and_resumes(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = dict(min_learning_rate=1e-2, max_learning_rate=1e3, learning_rate_points=2, seeds=[0, 1], depths=[2, 4])
    grid.update(diagnostics=True)
    variants = ["post-layernorm-deepnorm-b2t", "none"]
    recipe = SweepRecipe(**recipe_fields(workspace, tmp_path), **grid, variants=variants, processes=1)
    runs, ranges = run_sweep(recipe)

    assert [(run.num_hidden_layers, run.variant, run.learning_rate, run.seed) for run in runs] == [
        (depth, variant, lr, seed)
        for depth in (2, 4)
        for variant in variants
        for lr in (0.01, 1000.0)
        for seed in (0, 1)
    ]
    for run in runs:
        if run.learning_rate == 0.01:
            assert not run.diverged and run.final_eval_loss < run.initial_eval_loss, run
            assert run.grad_ratio > 0  # from the run's diagnostics
        else:  # a learning rate of 1000 wrecks either model
            assert run.diverged, run
    # Seeds change the initial weights and the data order: the two seeds of a cell differ.
    assert runs[0].final_eval_loss != runs[1].final_eval_loss
    assert [(r.num_hidden_layers, r.variant, r.best_learning_rate, r.diverged, r.seeds) for r in ranges] == [
        (depth, variant, 0.01, [1000.0], 2) for depth in (2, 4) for variant in variants
    ]
    assert repr(read_csv(tmp_path / "sweep.csv")) == repr(runs)
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "usable_lr.md").read_text() == format_sweep_report(runs, 0.1)
    assert format_ranges(ranges, 0.1) in format_sweep_report(runs, 0.1)
    run_dirs = sorted((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 16
    config = json.loads((tmp_path / "configs" / "L4_post-layernorm-deepnorm-b2t.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["b2t_connection"]
    assert config["residual_alpha"] == pytest.approx(deepnorm_settings(4)["residual_alpha"])
    for run_dir in run_dirs:
        assert (run_dir / "metrics.jsonl").is_file() and not list(run_dir.glob("checkpoint-*"))

    # Run again after a kill that lost one run: only that run trains; the others are read back.
    lost = runs[0]
    lost_dir = tmp_path / "runs" / f"L2_{lost.variant}_lr{lost.learning_rate:g}_warmup1_seed{lost.seed}"
    shutil.rmtree(lost_dir)
    trained = []
    real_run_one = albertagpt.lab.run_one
    monkeypatch.setattr(albertagpt.lab, "run_one", lambda *args: trained.append(args[2]) or real_run_one(*args))
    again, _ = run_sweep(recipe)
    assert [Path(run_recipe.output_dir) for run_recipe in trained] == [lost_dir]
    assert repr(again[1:]) == repr(runs[1:]) and again[0].final_eval_loss == pytest.approx(runs[0].final_eval_loss)
    # An earlier sweep's CSV joins the results: its other depth is added, its copy of a grid point is not.
    # Its warm-up differs, so some depth and warm-up panels of the plot have no runs.
    earlier = [replace(runs[0], num_hidden_layers=24, warmup_steps=50), replace(runs[1], final_eval_loss=0.5)]
    write_csv(earlier, tmp_path / "earlier.csv")
    write_csv(earlier, tmp_path / "earlier_again.csv")  # a run in two included files counts once
    trained.clear()
    included = [str(tmp_path / "earlier.csv"), str(tmp_path / "earlier_again.csv")]
    merged, merged_ranges = run_sweep(replace(recipe, include_csv=included))
    assert not trained
    # The sweep flushed subnormal floats while its runs trained, and stops when they are done.
    assert torch.tensor([1e-39]).mul(1.0).item() != 0
    assert repr(merged) == repr([earlier[0], *again])
    assert repr(read_csv(tmp_path / "sweep.csv")) == repr(merged)
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert [r.num_hidden_layers for r in merged_ranges] == [24] + [depth for depth in (2, 4) for _ in variants]
    # A changed recipe trains every run again: its results would not be comparable.
    trained.clear()
    run_sweep(
        SweepRecipe(**{**recipe_fields(workspace, tmp_path), "max_steps": 2}, **grid, variants=["none"], processes=1)
    )
    assert len(trained) == 8


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
