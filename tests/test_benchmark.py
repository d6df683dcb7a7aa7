"""Smoke tests of the benchmark's measuring functions on a tiny shape (no timing assertions)."""

import json
import runpy
import sys
from dataclasses import replace

import pytest
import torch
from helpers import REPO_ROOT

from albertagpt.benchmark import (
    MODEL_NAMES,
    QUICK_SETTINGS,
    QUICK_SHAPE,
    TARGETS,
    BenchmarkShape,
    build_model,
    compute_round_ratios,
    count_training_flops,
    format_table,
    measure_training_memory,
    random_tokens,
    round_ratio_quartiles,
    run_benchmark,
)


@pytest.fixture
def one_thread():
    # Tiny ops on a shared 2-core machine run faster without a second thread to wait for.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_training_flops(name: str, shape: BenchmarkShape) -> int:
    """Forward matmul + attention FLOPs, times 3 for forward + backward (attention counted in full)."""
    tokens, hidden = shape.tokens_per_step, shape.hidden_size
    per_layer = 2 * tokens * hidden * (4 * hidden + 2 * shape.intermediate_size) + 4 * tokens * shape.seq_len * hidden
    if name == "albertagpt":  # E -> H in, H -> E head, E -> V tied decoder
        head = 2 * tokens * shape.embedding_size * (2 * hidden + shape.vocab_size)
    else:
        head = 2 * tokens * hidden * shape.vocab_size
    return 3 * (shape.num_layers * per_layer + head)


def test_flop_counts_match_the_architecture_and_favour_albertagpt(one_thread):
    shape = QUICK_SHAPE
    input_ids = random_tokens(shape.batch_size, shape.seq_len, shape.vocab_size, seed=0, device=torch.device("cpu"))
    flops = {name: count_training_flops(build_model(name, shape), input_ids) for name in MODEL_NAMES}
    for name, counted in flops.items():
        # exact for every attention path: SDPA on CPU (flash kernel) and the math path GPT-2 takes with dropout
        assert counted == expected_training_flops(name, shape), name
    assert flops["albertagpt"] < flops["gpt2"] == flops["gpt2_matched"]
    # with a vocabulary much larger than E the factorized head saves most of GPT-2's head FLOPs
    big_vocab = replace(shape, vocab_size=4096)
    assert expected_training_flops("albertagpt", big_vocab) < 0.75 * expected_training_flops("gpt2", big_vocab)


def test_run_benchmark_reports_every_measurement(one_thread):
    settings = replace(
        QUICK_SETTINGS, train_steps=1, generate_batch_sizes=(1, 2), generate_repeats=1, scaling_seq_lens=(16, 32)
    )
    results = run_benchmark(QUICK_SHAPE, settings, log=lambda message: None)

    assert set(results["training"]) == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        training = results["training"][name]
        assert training["tokens_per_s"] > 0 and training["flops_per_step"] > 0
        assert training["mfu"] == pytest.approx(
            training["flops_per_step"] / training["median_step_s"] / results["matmul_peak_flops"]
        )
        assert results["memory"][name] > 0
    assert set(results["generation"]) == {"batch_1", "batch_2"}
    assert all(
        per_model[name]["tokens_per_s"] > 0 for per_model in results["generation"].values() for name in MODEL_NAMES
    )
    assert [row["seq_len"] for row in results["scaling_seq_len"]] == [16, 32]
    assert [row["batch_size"] for row in results["scaling_seq_len"]] == [4, 2]  # tokens per step held at 64

    # shared weights: depth adds compute but no parameters; GPT-2 grows by one block per layer
    depth = results["scaling_depth"]
    assert depth[0]["parameters"]["albertagpt"] == depth[1]["parameters"]["albertagpt"]
    assert depth[1]["parameters"]["gpt2"] > depth[0]["parameters"]["gpt2"]
    assert results["parameters"]["albertagpt"] < results["parameters"]["gpt2"]

    ratios = results["ratios"]["gpt2"]
    assert ratios["flops_per_token"] < 1.0
    assert ratios["training_tokens_per_s"] == pytest.approx(
        results["training"]["albertagpt"]["tokens_per_s"] / results["training"]["gpt2"]["tokens_per_s"]
    )
    assert set(results["targets"]) == set(TARGETS) - {"generate_tokens_per_s_batch_8"}  # batch 2 here, not 8
    assert results["round_ratios"]["gpt2"] == {}  # one timed round each: no spread to report
    table = format_table(results)
    assert "training tokens/s" in table and "generate tokens/s, batch 2" in table
    assert table.endswith(
        "The targets are stated for the default shape on a CPU in float32: here they are for reference."
    )


def test_command_line_passes_its_settings_through(one_thread, tmp_path, monkeypatch, capsys):
    output = tmp_path / "results.json"
    argv = ["benchmark.py", "--quick", "--generate_repeats", "3", "--train_steps", "1", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO_ROOT / "scripts" / "benchmark.py"), run_name="__main__")

    results = json.loads(output.read_text())
    assert results["settings"]["generate_repeats"] == 3 and results["settings"]["train_steps"] == 1
    assert results["shape"]["hidden_size"] == QUICK_SHAPE.hidden_size
    assert all(len(run["times_s"]) == 3 for per_model in results["generation"].values() for run in per_model.values())
    assert all(len(run["step_times_s"]) == 1 for run in results["training"].values())
    assert "generate tokens/s, batch 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "option, value, match",
    [("--output", "{tmp}", "cannot be written as a file"), ("--plot", "{tmp}/plot.xyz", "matplotlib writes only")],
)
def test_output_paths_that_cannot_be_written_are_refused_before_measuring(
    tmp_path, monkeypatch, capsys, option, value, match
):
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--quick", option, value.format(tmp=tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "scripts" / "benchmark.py"), run_name="__main__")
    assert exit_info.value.code == 2
    printed = capsys.readouterr()
    assert match in printed.err and "training tokens/s" not in printed.out  # nothing was measured


def test_cpu_training_memory_is_measured_in_bfloat16_too():
    fp32, bf16 = (
        measure_training_memory("albertagpt", QUICK_SHAPE, torch.device("cpu"), steps=1, dtype=dtype)
        for dtype in ("float32", "bfloat16")
    )
    assert fp32 > 0 and bf16 > 0


def test_round_ratios_pair_the_models_round_by_round():
    # A slow phase hits both models of a round: the per-round ratio stays 2 while the times vary 3x.
    albertagpt_times = [1.0, 3.0, 1.0, 3.0, 2.0]
    peer_times = [2.0 * t for t in albertagpt_times]
    assert round_ratio_quartiles(albertagpt_times, peer_times) == [2.0, 2.0, 2.0]
    assert round_ratio_quartiles([1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.5, 2.0, 2.5, 3.0]) == [1.5, 2.0, 2.5]
    results = {
        "training": {"albertagpt": {"step_times_s": albertagpt_times}, "gpt2": {"step_times_s": peer_times}},
        "generation": {
            "batch_1": {"albertagpt": {"times_s": [1.0, 2.0, 1.0]}, "gpt2": {"times_s": [1.5, 2.0, 2.0]}},
            "batch_8": {"albertagpt": {"times_s": [1.0, 1.0]}, "gpt2": {"times_s": [2.0, 2.0]}},  # too few rounds
        },
    }
    assert compute_round_ratios(results, "gpt2") == {
        "training_tokens_per_s": [2.0, 2.0, 2.0],
        "generate_tokens_per_s_batch_1": [1.25, 1.5, 1.75],
    }


@pytest.mark.parametrize(
    "settings_change, match",
    [
        (dict(scaling_seq_lens=(16, 256)), "Scaling sequence length 256 exceeds `max_positions` \\(128\\)"),
        (dict(prompt_len=100, new_tokens=40), "`prompt_len` \\+ `new_tokens` \\(100 \\+ 40\\) exceeds"),
    ],
)
def test_lengths_beyond_the_positions_are_refused_before_measuring(settings_change, match):
    measured = []
    with pytest.raises(ValueError, match=match):
        run_benchmark(QUICK_SHAPE, replace(QUICK_SETTINGS, **settings_change), log=measured.append)
    assert measured == []  # nothing was measured (and thrown away) first


def test_gpt2_models_name_their_loss() -> None:
    """transformers finds no loss in the class name `GPT2LMHeadModel` and warns `loss_type=None ... unrecognized` on
    the first training step unless the model names it."""
    for name in ("gpt2", "gpt2_matched"):
        assert build_model(name, QUICK_SHAPE).loss_type == "ForCausalLM"
