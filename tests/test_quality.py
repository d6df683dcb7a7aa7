"""The quality benchmark: GPT-2 configs matched to AlbertAGPT by compute and by parameters, both trained through the
same loop, the grid and seed protocol, and the results file a reader checks."""

import json
from pathlib import Path

import pytest
from helpers import TINY_SIZES, tiny_config
from test_lab import recipe_fields
from transformers import GPT2LMHeadModel

import albertagpt.quality
from albertagpt.data import builtin_corpus
from albertagpt.quality import (
    QualityRecipe,
    comparison_configs,
    format_summary,
    parameter_count,
    read_results,
    run_quality_benchmark,
    summary,
)
from albertagpt.tokenizer import train_tokenizer
from albertagpt.training import read_metrics

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_gpt2_configs_match_compute_and_parameters() -> None:
    albertagpt = tiny_config(vocab_size=2000, num_hidden_groups=1)
    configs = comparison_configs(albertagpt)
    compute = configs["equal_compute"]
    assert (compute.n_embd, compute.n_layer, compute.n_head, compute.n_inner) == (32, 4, 4, 64)
    assert compute.activation_function == albertagpt.hidden_act and compute.n_positions == 64
    target = parameter_count(albertagpt)
    params = configs["equal_params"]
    assert (params.n_layer, params.n_head, params.n_inner) == (4, 4, 4 * params.n_embd)
    best = abs(parameter_count(params) - target)
    for width in (params.n_embd - 4, params.n_embd + 4):  # the neighbouring widths are further away
        neighbour = type(params).from_dict({**params.to_dict(), "n_embd": width, "n_inner": 4 * width})
        assert abs(parameter_count(neighbour) - target) >= best
    assert parameter_count(compute) > target  # shared weights: GPT-2 of the same shape has more parameters


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quality")
    documents = [text[:1500] for text in builtin_corpus("train")[:30]]
    (root / "corpus.txt").write_text("\n\n".join(text.replace("\n\n", "\n") for text in documents))
    train_tokenizer(documents, vocab_size=300).save_pretrained(root / "tokenizer")
    (root / "model.json").write_text(json.dumps({**TINY_SIZES, "num_hidden_groups": 1}))
    return root


def test_benchmark_trains_both_models_through_the_loop_and_writes_the_results(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = QualityRecipe(
        **{**recipe_fields(workspace, tmp_path / "quality"), "eval_steps": 2},
        learning_rates=[1e-3, 1e-2],
        seeds=[0, 1],
        results_file=str(tmp_path / "quality.json"),
        plot_file=str(tmp_path / "quality.png"),
        processes=1,
    )
    runs = run_quality_benchmark(recipe)

    rows = json.loads((tmp_path / "quality.json").read_text())
    fields = {"model", "comparison", "parameters", "flops_per_token", "tokens", "learning_rate", "seed"}
    assert all(fields | {"final_eval_loss"} <= row.keys() for row in rows)
    assert repr(read_results(tmp_path / "quality.json")) == repr(runs)
    # A grid of 2 learning rates with the first seed, then the best one with the second: 3 runs per model; the
    # AlbertAGPT runs are listed under both comparisons.
    for comparison in ("equal_compute", "equal_params"):
        for model in ("albertagpt", "gpt2"):
            chosen = [run for run in runs if (run.model, run.comparison) == (model, comparison)]
            assert sorted((run.learning_rate, run.seed) for run in chosen)[:2] == [(1e-3, 0), (1e-2, 0)]
            assert len(chosen) == 3 and {run.seed for run in chosen} == {0, 1}
            assert all(run.tokens == 4 * 4 * 32 and run.flops_per_token > 0 for run in chosen)
            assert all(run.final_eval_loss < run.eval_curve[0][1] for run in chosen)  # it trained
    # GPT-2 ran through the library's loop: its folder has the loop's metrics and a GPT-2 model.
    gpt2_dir = next((tmp_path / "quality" / "runs").glob("gpt2_equal_compute_lr*_seed0"))
    assert any("eval_loss" in row for row in read_metrics(gpt2_dir / "metrics.jsonl"))
    assert GPT2LMHeadModel.from_pretrained(gpt2_dir).config.n_embd == 32
    table = summary(runs)
    compute_rows = [row for row in table if row["comparison"] == "equal_compute"]
    ratio = compute_rows[0]["final_eval_loss"] / compute_rows[1]["final_eval_loss"]
    assert compute_rows[0]["loss_ratio"] == pytest.approx(ratio)
    assert "| equal_params | gpt2 |" in format_summary(runs)
    assert (tmp_path / "quality.png").read_bytes().startswith(b"\x89PNG")

    # The same command again trains nothing: every run is read back from its folder.
    monkeypatch.setattr(albertagpt.quality, "run_one", lambda recipe: pytest.fail("trained again"))
    assert repr(run_quality_benchmark(recipe)) == repr(runs)


def test_bad_grids_are_named() -> None:
    with pytest.raises(ValueError, match="`learning_rates`"):
        QualityRecipe(learning_rates=[0.0])
    with pytest.raises(ValueError, match="`learning_rates` lists a value twice"):
        QualityRecipe(learning_rates=[1e-3, 1e-3])
    with pytest.raises(ValueError, match="`seeds`"):
        QualityRecipe(seeds=[])
