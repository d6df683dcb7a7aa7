"""The `albertagpt` command and the presets it names, as a user of the built wheel gets them."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO_ROOT

import albertagpt
from albertagpt.commands import COMMANDS, main
from albertagpt.presets import PRESETS_DIR, preset_names, resolve_preset
from albertagpt.training import read_model_config


def test_help_lists_every_command_in_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert name in listing
        assert command.__doc__.splitlines()[0].split()[0] in listing
    assert set(COMMANDS) == {
        "train",
        "train-tokenizer",
        "push",
        "convert-albert",
        "sweep",
        "quality",
        "benchmark",
        "plot",
    }


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"albertagpt {albertagpt.__version__}"


def test_a_command_reads_its_own_flags(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: albertagpt train") and "--model_config" in usage and "--config" in usage
    with pytest.raises(SystemExit, match="'max_step'"):
        main(["train", "--config", "tiny", "--max_step", "5"])
    with pytest.raises(SystemExit):
        main(["no-such-command"])


def test_presets_resolve_by_name_and_a_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_preset("tiny", "model") == PRESETS_DIR / "model" / "tiny.json"
    assert resolve_preset("tiny", "train") == PRESETS_DIR / "train" / "tiny.yaml"
    assert {"tiny", "base", "large", "xlarge", "xxlarge", "lab"} <= set(preset_names("model"))
    assert {"tiny", "base", "lr_sweep", "quality"} <= set(preset_names("train"))
    # The packaged presets are the repository's files.
    for kind, suffix in (("model", ".json"), ("train", ".yaml")):
        for name in preset_names(kind):
            assert (PRESETS_DIR / kind / f"{name}{suffix}").read_bytes() == (
                REPO_ROOT / "configs" / kind / f"{name}{suffix}"
            ).read_bytes()
    assert read_model_config("base").hidden_size == 768

    # A bare name is the preset, even where the working directory holds a file or folder of that name (a run's
    # `--output_dir tiny`); `./tiny` names the local one.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 2}))
    (tmp_path / "base").mkdir()
    assert resolve_preset("tiny", "model") == PRESETS_DIR / "model" / "tiny.json"
    assert resolve_preset("base", "train") == PRESETS_DIR / "train" / "base.yaml"
    assert read_model_config("./tiny").hidden_size == 32
    assert read_model_config("tiny").hidden_size == 128
    with pytest.raises(FileNotFoundError, match="`config` './base' is neither a recipe file"):
        resolve_preset("./base", "train")  # a folder is no recipe
    with pytest.raises(FileNotFoundError, match=r"`model_config` 'tinyy' .* presets are: base, lab, large, tiny"):
        read_model_config("tinyy")


def build_wheel(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(folder), "."],
        cwd=REPO_ROOT,
        check=True,
    )
    (wheel,) = folder.glob("albertagpt-*.whl")
    return wheel


def environment_with_wheel(wheel: Path, venv: Path) -> Path:
    """A fresh virtual environment with the wheel installed offline; the dependencies (torch, transformers, ...)
    come from this test's environment through a path file, so nothing is downloaded."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", str(wheel)], check=True)
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site_packages) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.mark.skipif(sys.platform == "win32", reason="the test's virtual environment uses POSIX paths")
def test_the_wheel_runs_the_main_job_from_an_empty_directory(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    bin_dir = environment_with_wheel(wheel, tmp_path / "venv")
    workdir = tmp_path / "empty"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    quick = ["--max_steps", "4", "--warmup_steps", "1", "--eval_steps", "4", "--checkpointing_steps", "4"]
    quick += ["--vocab_size", "300", "--block_size", "32", "--max_eval_batches", "1", "--report_to", "none"]
    completed = subprocess.run(
        [str(bin_dir / "albertagpt"), "train", "--config", "tiny", *quick],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout + completed.stderr
    assert "Removed shared tensor" not in output  # the tied head saves the way transformers expects

    load = (
        "import albertagpt, json, torch;"
        "from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "model = AutoModelForCausalLM.from_pretrained('runs/tiny');"
        "tokenizer = AutoTokenizer.from_pretrained('runs/tiny');"
        "ids = tokenizer('The', return_tensors='pt').input_ids;"
        "print(json.dumps({'package': albertagpt.__file__, 'layers': model.config.num_hidden_layers,"
        "'tokens': model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] - ids.shape[1]}))"
    )
    loaded = subprocess.run(
        [str(bin_dir / "python"), "-c", load], cwd=workdir, env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert report["package"].startswith(str(tmp_path / "venv"))  # the wheel's copy, not the repository's
    assert report["layers"] == json.loads((REPO_ROOT / "configs/model/tiny.json").read_text())["num_hidden_layers"]
    assert report["tokens"] == 3
    assert sorted(path.name for path in workdir.iterdir()) == ["runs"]  # everything went to the recipe's output_dir


def test_bad_input_inside_a_command_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^error: `model_config` 'nope' is neither"):
        main(["train", "--config", "tiny", "--model_config", "nope"])
    # A sweep never writes into a training run's folder.
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit, match=r"^error: `output_dir` 'runs/tiny' holds a training run"):
        main(["sweep", "--config", "tiny"])


def test_a_mistyped_albert_folder_is_named_not_looked_up_on_the_hub(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["convert-albert", "--albert", "./no-such-albert", "--output_dir", "out"])
    assert "--albert './no-such-albert' is no folder" in capsys.readouterr().err
