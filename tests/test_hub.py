"""Publishing to the Hub, offline: the repo folder, its model card, the upload call and loading without the package.

A fake training output folder (tiny model, a 300-token tokenizer from `train_tokenizer`, a metrics.jsonl ending
with the model's measured held-out loss, a recipe) stands in for scripts/train.py. Repos are loaded from a
simulated Hub cache in a fresh interpreter where `import albertagpt` fails, so only the repo's own remote code runs.
"""

import json
import math
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from pydoc_data.topics import topics
from types import SimpleNamespace

import pytest
import torch
import transformers.utils.hub
from helpers import REPO_ROOT, make_hub_snapshot, run_without_package, tiny_config
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import EntryNotFoundError
from matplotlib.image import imread
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, pipeline

from albertagpt import AlbertAGPTForCausalLM, hub
from albertagpt.configuration_albertagpt import MIN_TRANSFORMERS_VERSION
from albertagpt.tokenizer import train_tokenizer

REPO_ID = "albertagpt-tests/tiny-dry-run"
PUSHED_REPO_ID = "albertagpt-tests/tiny-push-to-hub"
SHARD_LIMIT = "40KB"
SHARD_LIMIT_BYTES = 40_000
PROMPT = "The"
PROBE_TEXT = "Unicode strings: naïve café — λ."
RECIPE = {
    "output_dir": "/home/alice/runs/out",  # absolute paths are published as their last component
    "model_config": "configs/model/tiny.json",
    "tokenizer": "C:\\Users\\alice\\tokenizer",  # also Windows ones
    "dataset_name": "wikitext",
    "dataset_config_name": "wikitext-2-raw-v1",
    "validation_split_percentage": 5,
    "block_size": 64,
    "learning_rate": 0.001,
    "max_steps": 30,
}
HELD_OUT_TEXT = "\n".join(list(topics.values())[40:42])[:2000]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket connection in this process is a test failure (subprocesses run with HF_HUB_OFFLINE=1)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def logged_out(monkeypatch, tmp_path):
    """No token anywhere: not in the environment, not from a prior `hf auth login`."""
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A training output folder; its metrics.jsonl ends with the model's real loss on held-out text."""
    folder = tmp_path_factory.mktemp("trained")
    tokenizer = train_tokenizer(list(topics.values())[:20], vocab_size=300)
    torch.manual_seed(0)
    # A large init makes logits and greedy continuations differ clearly between inputs.
    model = AlbertAGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), initializer_range=0.5)).eval()
    held_out = torch.tensor([tokenizer(HELD_OUT_TEXT)["input_ids"][:64]])
    with torch.no_grad():
        eval_loss = model(held_out, labels=held_out).loss.item()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    entries = [
        {"step": 0, "eval_loss": eval_loss + 0.7, "perplexity": math.exp(eval_loss + 0.7)},
        {"step": 10, "loss": 6.1, "learning_rate": 1e-3, "tokens_per_second": 950.0},
        {"step": 20, "loss": 5.4, "learning_rate": 6e-4, "tokens_per_second": 1010.0},
        {"step": 30, "loss": 5.05, "learning_rate": 1e-4, "tokens_per_second": 990.0},
        {"step": 30, "eval_loss": eval_loss, "perplexity": math.exp(eval_loss)},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    (folder / "training_recipe.json").write_text(json.dumps(RECIPE, indent=2))
    return folder


@pytest.fixture(scope="module")
def metrics_entries(trained_dir) -> list[dict]:
    return [json.loads(line) for line in (trained_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def source(trained_dir) -> SimpleNamespace:
    """The trained model and tokenizer as the package loads them: the reference for every loaded copy."""
    model = AlbertAGPTForCausalLM.from_pretrained(trained_dir).eval()
    return SimpleNamespace(model=model, tokenizer=AutoTokenizer.from_pretrained(trained_dir))


@pytest.fixture(scope="module")
def dry_run_repo(trained_dir, tmp_path_factory) -> Path:
    """The command line's dry run, with no token and the Hub offline: it must need neither."""
    folder = tmp_path_factory.mktemp("dry_run") / "repo"
    environment = {
        name: value for name, value in os.environ.items() if name not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    }
    environment.update(HF_HUB_OFFLINE="1", HF_HOME=str(folder.parent / "hf_home"))
    command = [sys.executable, str(REPO_ROOT / "scripts" / "push_to_hub.py"), "--model_dir", str(trained_dir)]
    command += ["--repo_id", REPO_ID, "--dry_run", str(folder), "--max_shard_size", SHARD_LIMIT]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "nothing was uploaded" in completed.stdout
    return folder


class FakeTransformersHubApi:
    """Stands in for the HfApi that `PreTrainedModel.push_to_hub` uses; keeps the files of each commit."""

    def __init__(self, repo_folder: Path):
        self.repo_folder = repo_folder
        self.commits = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        self.commits.append(sorted(operation.path_in_repo for operation in operations))
        for operation in operations:
            target = self.repo_folder / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)


@pytest.fixture(scope="module")
def pushed_repo(source, tmp_path_factory) -> Path:
    """What the plain transformers API (`model.push_to_hub`, `tokenizer.push_to_hub`) uploads."""
    folder = tmp_path_factory.mktemp("pushed")
    fake_api = FakeTransformersHubApi(folder)

    def no_remote_card(repo_id, **kwargs):
        raise EntryNotFoundError(f"{repo_id} has no README.md yet")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.utils.hub, "hf_api", lambda: fake_api)
        patch.setattr(transformers.utils.hub.ModelCard, "load", no_remote_card)
        source.model.push_to_hub(PUSHED_REPO_ID, max_shard_size=SHARD_LIMIT)
        source.tokenizer.push_to_hub(PUSHED_REPO_ID)
    assert len(fake_api.commits) == 2
    return folder


def card_snippet(card_text: str) -> str:
    (snippet,) = re.findall(r"```python\n(.*?)```", card_text, flags=re.DOTALL)
    return snippet


LOAD_WITHOUT_PACKAGE = """
import builtins, contextlib, io
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

# transformers asks on stdin whether to run a repo's code when trust_remote_code is missing (and swallows
# errors raised here), so record every prompt.
prompts = []

def record_prompt(question):
    prompts.append(question)
    return "n"

builtins.input = record_prompt
request = json.loads(REQUEST)
results = {}
# The card's snippet runs first, in an interpreter that has loaded nothing yet, exactly as a reader would run it.
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    exec(request["card_snippet"], {})
results["card_snippet_output"] = printed.getvalue()
for repo_id in request["repo_ids"]:
    tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
    probe_ids = tokenizer(request["probe_text"])["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([probe_ids])).logits
    generator = pipeline("text-generation", model=repo_id, trust_remote_code=True)
    generated = generator(request["prompt"], max_new_tokens=8, do_sample=False)[0]["generated_text"]
    results[repo_id] = {
        "probe_ids": probe_ids,
        "decoded": tokenizer.decode(probe_ids),
        "logits": logits.tolist(),
        "generated": generated,
        "model_module": type(model).__module__,
    }
results["prompts"] = prompts
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def loaded_without_package(dry_run_repo, pushed_repo, tmp_path_factory) -> dict:
    """Both repos, laid out as Hub downloads, loaded in one fresh interpreter (one start-up for the two)."""
    root = tmp_path_factory.mktemp("clean_interpreter")
    hub_cache = root / "hub_cache"
    make_hub_snapshot(dry_run_repo, hub_cache, REPO_ID)
    make_hub_snapshot(pushed_repo, hub_cache, PUSHED_REPO_ID)
    request = {
        "repo_ids": [REPO_ID, PUSHED_REPO_ID],
        "probe_text": PROBE_TEXT,
        "prompt": PROMPT,
        "card_snippet": card_snippet((dry_run_repo / "README.md").read_text()),
    }
    code = f"REQUEST = {json.dumps(json.dumps(request))}\n" + LOAD_WITHOUT_PACKAGE
    return run_without_package(code, hub_cache, root)


def expected_greedy_text(source: SimpleNamespace, max_new_tokens: int) -> str:
    generator = pipeline("text-generation", model=source.model, tokenizer=source.tokenizer)
    return generator(PROMPT, max_new_tokens=max_new_tokens, do_sample=False)[0]["generated_text"]


def assert_loads_like_source(result: dict, source: SimpleNamespace) -> None:
    assert result["model_module"].startswith("transformers_modules.")  # the repo's code, not the package
    expected_ids = source.tokenizer(PROBE_TEXT)["input_ids"]
    assert result["probe_ids"] == expected_ids
    assert result["decoded"] == PROBE_TEXT
    with torch.no_grad():
        expected_logits = source.model(torch.tensor([expected_ids])).logits
    assert torch.equal(torch.tensor(result["logits"], dtype=expected_logits.dtype), expected_logits)
    assert result["generated"] == expected_greedy_text(source, max_new_tokens=8)


def test_dry_run_writes_exactly_the_repo_folder_with_sharded_weights(dry_run_repo):
    index = json.loads((dry_run_repo / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    expected = {
        "README.md",
        "config.json",
        "configuration_albertagpt.py",
        "modeling_albertagpt.py",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "loss_curve.png",
        "training_recipe.json",
        "model.safetensors.index.json",
        *shards,
    }
    assert {path.name for path in dry_run_repo.iterdir()} == expected
    for shard in shards:  # one tensor per shard at most crosses the limit; none of the tiny model's does
        assert (dry_run_repo / shard).stat().st_size <= SHARD_LIMIT_BYTES + 1024
    config = json.loads((dry_run_repo / "config.json").read_text())
    assert set(config["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForCausalLM",
        "AutoModelForSequenceClassification",
    }
    for code_file in ("configuration_albertagpt.py", "modeling_albertagpt.py"):
        assert (dry_run_repo / code_file).read_bytes() == (REPO_ROOT / "albertagpt" / code_file).read_bytes()


def test_the_repo_tokenizer_truncates_where_the_learned_positions_end(trained_dir, dry_run_repo):
    # The run's own tokenizer has no limit (as one saved before training set it); the repo's stops at the positions.
    long_text = HELD_OUT_TEXT * 10
    assert len(AutoTokenizer.from_pretrained(trained_dir)(long_text, truncation=True)["input_ids"]) > 2000
    tokenizer = AutoTokenizer.from_pretrained(dry_run_repo)
    max_positions = json.loads((dry_run_repo / "config.json").read_text())["max_position_embeddings"]
    assert tokenizer.model_max_length == max_positions
    assert len(tokenizer(long_text, truncation=True)["input_ids"]) == max_positions


def test_default_shard_size_keeps_one_weights_file(trained_dir, tmp_path):
    folder = hub.build_repo_folder(trained_dir, REPO_ID, tmp_path / "repo")
    names = {path.name for path in folder.iterdir()}
    assert "model.safetensors" in names
    assert not any(name.startswith("model-0") or name.endswith(".index.json") for name in names)


def test_dry_run_repo_loads_without_the_package(loaded_without_package, source):
    assert_loads_like_source(loaded_without_package[REPO_ID], source)


def test_card_usage_snippet_runs_as_written(loaded_without_package, source):
    with torch.no_grad():
        inputs = source.tokenizer(PROMPT, return_tensors="pt")
        output_ids = source.model.generate(**inputs, max_new_tokens=20, do_sample=False)
    expected_lines = [
        source.tokenizer.decode(output_ids[0], skip_special_tokens=True),
        expected_greedy_text(source, max_new_tokens=20),
    ]
    assert loaded_without_package["card_snippet_output"] == "\n".join(expected_lines) + "\n"
    assert loaded_without_package["prompts"] == []  # every loader in the snippet passes trust_remote_code=True


def test_plain_push_to_hub_repo_loads_with_remote_code(loaded_without_package, pushed_repo, source):
    config = json.loads((pushed_repo / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_albertagpt.AlbertAGPTForCausalLM"
    assert (pushed_repo / "model.safetensors.index.json").is_file()  # sharded by push_to_hub's own option
    assert_loads_like_source(loaded_without_package[PUSHED_REPO_ID], source)


def test_card_metadata_and_text_report_what_the_run_measured(dry_run_repo, metrics_entries, source):
    card = ModelCard.load(dry_run_repo / "README.md")
    final_eval = [entry for entry in metrics_entries if "eval_loss" in entry][-1]
    final_train = [entry for entry in metrics_entries if "loss" in entry][-1]
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert {"albertagpt", "custom_code"} <= set(card.data.tags)
    assert card.data.datasets == [RECIPE["dataset_name"]]
    results = {result.metric_type: result for result in card.data.eval_results}
    assert results["perplexity"].metric_value == pytest.approx(final_eval["perplexity"], abs=1e-4)
    assert results["loss"].metric_value == pytest.approx(final_eval["eval_loss"], abs=1e-4)
    assert results["perplexity"].dataset_type == RECIPE["dataset_name"]
    assert card.data.model_name == REPO_ID.split("/")[1]

    text = card.text
    assert f"**Parameters: {source.model.num_parameters():,}**" in text
    assert f"| final training loss | {final_train['step']} | {final_train['loss']:.4f} |" in text
    assert f"| held-out perplexity | {final_eval['step']} | {final_eval['perplexity']:.4f} |" in text
    for field in ("embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups"):
        assert f"| `{field}` | `{getattr(source.model.config, field)}` |" in text
    assert f"learning_rate: {RECIPE['learning_rate']}" in text  # the recipe, rendered
    # ... as the repo's recipe file holds it: the trainer's directories stay private, relative paths stay as they are.
    published = json.loads((dry_run_repo / "training_recipe.json").read_text())
    assert published == {**RECIPE, "output_dir": "out", "tokenizer": "tokenizer"}
    assert "alice" not in text and "output_dir: out" in text
    assert "![Training and held-out loss](loss_curve.png)" in text
    assert f'repo_id = "{REPO_ID}"' in text
    # What a user of other tools needs: the transformers that runs the code, PEFT prompt tuning's width, TRL, lm-eval
    assert f'pip install "transformers>={MIN_TRANSFORMERS_VERSION}"' in text
    assert "token_dim=model.config.embedding_size" in text
    assert "SFTTrainer(model=model" in text and "DPOTrainer(model=model" in text
    assert f"lm_eval --model hf --model_args pretrained={REPO_ID},trust_remote_code=True --tasks" in text
    height, width, _ = imread(dry_run_repo / "loss_curve.png").shape
    assert (width, height) == (640, 400)


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi at the network boundary: records calls and what would be uploaded."""

    instances = []

    def __init__(self, token=None):
        self.token = token
        self.calls = []
        RecordingHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        uploaded = {path.name: path.read_bytes() for path in folder.iterdir()}
        self.calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "files": uploaded}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0")


def test_upload_creates_repo_and_uploads_the_folder_in_one_commit(
    trained_dir, dry_run_repo, metrics_entries, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(RecordingHfApi, "instances", [])
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    commit = hub.push_trained_model(trained_dir, REPO_ID, private=True, revision="v1", max_shard_size=SHARD_LIMIT)

    (api,) = RecordingHfApi.instances
    assert api.token == "hf_test_token"
    assert [(name, repo_id) for name, repo_id, _ in api.calls] == [
        ("create_repo", REPO_ID),
        ("create_branch", REPO_ID),
        ("upload_folder", REPO_ID),
    ]
    assert api.calls[0][2] == {"repo_type": "model", "private": True, "exist_ok": True}
    assert api.calls[1][2] == {"branch": "v1", "repo_type": "model", "exist_ok": True}
    upload = api.calls[2][2]
    assert upload["revision"] == "v1"
    final_eval = [entry for entry in metrics_entries if "eval_loss" in entry][-1]
    assert upload["commit_message"] == (
        f"Upload AlbertAGPT trained for 30 steps (held-out perplexity {final_eval['perplexity']:.2f})"
    )
    assert set(upload["delete_patterns"]) == {"*.safetensors", "model.safetensors.index.json"}
    # The upload is exactly the dry run's folder: same files, same weights and card.
    assert set(upload["files"]) == {path.name for path in dry_run_repo.iterdir()}
    for name in ("model.safetensors.index.json", "config.json", "README.md", "tokenizer.json"):
        assert upload["files"][name] == (dry_run_repo / name).read_bytes()
    assert commit.commit_url.startswith(f"https://huggingface.co/{REPO_ID}/")


def test_without_token_upload_stops_before_any_work(logged_out, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    monkeypatch.setattr(RecordingHfApi, "instances", [])
    missing_model_dir = tmp_path / "not-even-there"  # would fail first if any work were done
    with pytest.raises(hub.NotLoggedInError, match=r"hf auth login.*HF_TOKEN"):
        hub.push_trained_model(missing_model_dir, REPO_ID)
    assert RecordingHfApi.instances == []


def test_command_line_without_token_explains_how_to_log_in(logged_out, monkeypatch, capsys, tmp_path):
    argv = ["push_to_hub.py", "--model_dir", str(tmp_path / "missing"), "--repo_id", REPO_ID]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "scripts" / "push_to_hub.py"), run_name="__main__")
    assert exit_info.value.code == 2
    assert "hf auth login" in capsys.readouterr().err


def broken_copy(trained_dir: Path, tmp_path: Path, removed: tuple[str, ...] = (), config_update: dict | None = None):
    """A copy of the trained folder without the `removed` files and with `config_update` merged into its config."""
    folder = tmp_path / "broken"
    shutil.copytree(trained_dir, folder)
    for name in removed:
        (folder / name).unlink()
    if config_update:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **config_update}))
    return folder


@pytest.mark.parametrize(
    ("removed", "config_update", "message"),
    [
        (("config.json",), None, r"not a trained model folder.*no config\.json"),
        (("model.safetensors",), None, r"not a trained model folder.*no weights"),
        (("metrics.jsonl",), None, r"not a trained model folder.*no metrics\.jsonl"),
        (("tokenizer.json", "tokenizer_config.json"), None, r"has no tokenizer"),
        ((), {"model_type": "gpt2"}, r"model_type 'gpt2', not 'albertagpt'"),
    ],
)
def test_model_dir_that_is_not_a_trained_model_is_named(trained_dir, tmp_path, removed, config_update, message):
    folder = broken_copy(trained_dir, tmp_path, removed, config_update)
    with pytest.raises(ValueError, match=message) as error:
        hub.build_repo_folder(folder, REPO_ID, tmp_path / "out")
    assert str(folder) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_missing_model_dir_and_bad_metrics_are_named(trained_dir, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        hub.build_repo_folder(tmp_path / "nowhere", REPO_ID, tmp_path / "out")
    folder = broken_copy(trained_dir, tmp_path)
    metrics_path = folder / "metrics.jsonl"
    metrics_path.write_text('{"step": 1, "loss": 3.0}\n')
    with pytest.raises(ValueError, match="no held-out evaluation"):
        hub.build_repo_folder(folder, REPO_ID, tmp_path / "out")
    metrics_path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": \n{"step": 2, "eval_loss": 3.0}\n')
    with pytest.raises(ValueError, match="line 2, is not a JSON row"):
        hub.build_repo_folder(folder, REPO_ID, tmp_path / "out")


def test_tokenizer_larger_than_the_model_vocabulary_is_an_error(trained_dir, tmp_path):
    folder = broken_copy(trained_dir, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"<extra_{index}>" for index in range(400)])
    tokenizer.save_pretrained(folder)
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model's vocab_size is \d+"):
        hub.build_repo_folder(folder, REPO_ID, tmp_path / "out")


def test_weights_that_do_not_fit_the_config_are_an_error(trained_dir, tmp_path):
    folder = broken_copy(trained_dir, tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights["model.embedding_hidden_mapping_in.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"weights do not match config\.json.*embedding_hidden_mapping_in\.weight"):
        hub.build_repo_folder(folder, REPO_ID, tmp_path / "out")


@pytest.mark.parametrize("repo_id", ["org/bad name", "org/double--dash", "a/b/c", "no-namespace", "org/" + "x" * 97])
def test_invalid_repo_id_is_rejected_before_any_work(trained_dir, tmp_path, repo_id):
    with pytest.raises(ValueError, match=re.escape(repr(repo_id))):
        hub.build_repo_folder(trained_dir, repo_id, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dry_run_refuses_a_folder_that_is_not_empty(trained_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("left over")
    with pytest.raises(ValueError, match="must be new or empty"):
        hub.build_repo_folder(trained_dir, REPO_ID, tmp_path / "out")


@pytest.mark.parametrize(
    ("recipe", "hub_datasets", "description"),
    [
        ({"dataset_name": "wikitext", "dataset_config_name": "wikitext-2-raw-v1"}, ["wikitext"], "wikitext-2-raw-v1"),
        ({"train_files": ["/data/a.txt", "/data/b.jsonl"]}, None, "`a.txt`, `b.jsonl`"),
        ({"max_steps": 10}, None, "pydoc_data.topics"),
        ({"builtin_corpus": "stdlib"}, None, "standard library, without its tests"),
        (None, None, "not recorded"),
    ],
)
def test_training_data_is_named_from_the_recipe(recipe, hub_datasets, description):
    training_data = hub.describe_training_data(recipe)
    assert training_data.hub_datasets == hub_datasets
    assert description in training_data.description


@pytest.mark.parametrize(
    ("recipe", "held_out"),
    [
        ({"validation_split_percentage": 5}, "Python documentation (pydoc_data.topics), one topic in 10 held out"),
        ({"builtin_corpus": "stdlib"}, "Python standard library sources, one file in 10 held out"),
        ({"train_files": ["a.txt"], "validation_split_percentage": 20}, "`a.txt`, one document in 5 held out"),
        ({"dataset_name": "wikitext", "validation_split_percentage": 5}, "wikitext, its validation split (without "),
    ],
)
def test_the_card_names_the_held_out_split_that_training_used(recipe, held_out):
    assert hub.describe_training_data(recipe).eval_dataset_name.startswith(held_out)


def test_the_wheel_carries_the_card_template(tmp_path):
    """`albertagpt/model_card.md` links to the root template and is package data: a built wheel holds the text."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO_ROOT / "albertagpt", source / "albertagpt", symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "model_card.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    build = "from setuptools import build_meta; build_meta.build_wheel('dist')"
    subprocess.run([sys.executable, "-c", build], cwd=source, check=True, capture_output=True)
    (wheel,) = (source / "dist").glob("albertagpt-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = archive.read("albertagpt/model_card.md").decode()
    assert packaged == (REPO_ROOT / "model_card.md").read_text()
    assert hub.MODEL_CARD_TEMPLATE == Path(hub.__file__).parent / "model_card.md"


def test_a_template_that_is_not_one_is_named(trained_dir, tmp_path):
    # What a checkout without symbolic links (Windows, by default) holds in place of the linked template.
    link_as_text = tmp_path / "model_card.md"
    link_as_text.write_text("../model_card.md")
    model = AlbertAGPTForCausalLM.from_pretrained(trained_dir)
    metrics = hub.read_training_metrics(trained_dir / hub.METRICS_FILE)
    with pytest.raises(ValueError, match="model_card.md.*is not a model card template"):
        hub.render_model_card(model, metrics, None, "user/albertagpt-tiny", template_path=link_as_text)
