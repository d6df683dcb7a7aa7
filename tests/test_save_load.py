"""Saved folders hold safetensors + remote code and load identically, with and without the package."""

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import REPO_ROOT, make_hub_snapshot, run_torchrun, run_without_package, tiny_config
from packaging import version
from parallel_load_worker import fixed_batch
from safetensors.torch import load_file, save_file
from test_modeling import ARCHITECTURE_IDS, ARCHITECTURES
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from albertagpt import AlbertAGPTForCausalLM, AlbertAGPTForSequenceClassification, AlbertAGPTModel
from albertagpt.configuration_albertagpt import MIN_TRANSFORMERS_VERSION

INPUT_IDS = [[5, 17, 33, 8, 61, 2], [9, 4, 4, 90, 12, 3]]


def saved_model(tmp_path: Path, **overrides) -> tuple[AlbertAGPTForCausalLM, Path]:
    torch.manual_seed(0)
    model = AlbertAGPTForCausalLM(tiny_config(initializer_range=0.3, **overrides)).eval()
    model.save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_save_pretrained_writes_safetensors_auto_map_and_the_model_files(tmp_path: Path) -> None:
    _, folder = saved_model(tmp_path)
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json"} <= files
    assert {"configuration_albertagpt.py", "modeling_albertagpt.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_albertagpt.AlbertAGPTConfig",
        "AutoModel": "modeling_albertagpt.AlbertAGPTModel",
        "AutoModelForCausalLM": "modeling_albertagpt.AlbertAGPTForCausalLM",
        "AutoModelForSequenceClassification": "modeling_albertagpt.AlbertAGPTForSequenceClassification",
    }


def test_the_copied_model_files_are_the_package_files(tmp_path: Path) -> None:
    _, folder = saved_model(tmp_path)
    package = Path(__file__).resolve().parents[1] / "albertagpt"
    for name in ("configuration_albertagpt.py", "modeling_albertagpt.py"):
        assert (folder / name).read_text() == (package / name).read_text()


def test_every_auto_class_loads_the_saved_folder_with_identical_logits(tmp_path: Path) -> None:
    model, folder = saved_model(tmp_path)
    input_ids = torch.tensor(INPUT_IDS)
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded) is AlbertAGPTForCausalLM
    assert loaded.lm_head.weight is loaded.model.embeddings.word_embeddings.weight
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, model(input_ids).logits)
        base = AutoModel.from_pretrained(folder).eval()
        assert type(base) is AlbertAGPTModel
        assert torch.equal(base(input_ids).last_hidden_state, model.model(input_ids).last_hidden_state)
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    assert type(classifier) is AlbertAGPTForSequenceClassification


# The names the LM head had in memory before its dense and LayerNorm moved into the base model.
OLD_HEAD_NAMES = {
    "model.head_transform.dense.weight": "lm_head.dense.weight",
    "model.head_transform.dense.bias": "lm_head.dense.bias",
    "model.head_transform.LayerNorm.weight": "lm_head.LayerNorm.weight",
    "model.head_transform.LayerNorm.bias": "lm_head.LayerNorm.bias",
    "lm_head.bias": "lm_head.decoder.bias",
}


def test_a_checkpoint_with_the_old_head_names_loads_to_identical_logits(tmp_path: Path) -> None:
    model, folder = saved_model(tmp_path)
    old_layout = {
        OLD_HEAD_NAMES.get(name, name): tensor.contiguous()
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight"  # tied: checkpoints leave it out
    }
    save_file(old_layout, folder / "model.safetensors", metadata={"format": "pt"})
    input_ids = torch.tensor(INPUT_IDS)
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert loaded.lm_head.weight is loaded.model.embeddings.word_embeddings.weight
    base = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, model(input_ids).logits)
        assert torch.equal(base(input_ids).last_hidden_state, model.model(input_ids).last_hidden_state)


def test_save_pretrained_keeps_the_checkpoint_names_of_the_head(tmp_path: Path) -> None:
    # The checkpoint format does not change with the module layout: older code loads newer checkpoints too.
    _, folder = saved_model(tmp_path)
    names = set(load_file(folder / "model.safetensors"))
    assert set(OLD_HEAD_NAMES.values()) <= names
    assert not any(name.startswith("model.head_transform.") for name in names)


@pytest.mark.parametrize("overrides", ARCHITECTURES, ids=ARCHITECTURE_IDS)
def test_hub_snapshot_loads_with_remote_code_where_the_package_cannot_be_imported(
    tmp_path: Path, overrides: dict
) -> None:
    model, folder = saved_model(tmp_path, **overrides)
    make_hub_snapshot(folder, tmp_path / "hub", "org/name")
    code = f"""
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
model = AutoModelForCausalLM.from_pretrained("org/name", trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(torch.tensor({INPUT_IDS})).logits
generated = model.generate(torch.tensor([[5, 17, 33]]), max_new_tokens=5, min_new_tokens=5, do_sample=False)
base = AutoModel.from_pretrained("org/name", trust_remote_code=True)
classifier = AutoModelForSequenceClassification.from_pretrained("org/name", trust_remote_code=True, num_labels=2)
print(json.dumps({{
    "class": type(model).__name__,
    "module": type(model).__module__,
    "logits": logits.tolist(),
    "generated": generated.tolist(),
    "base": type(base).__name__,
    "classifier": type(classifier).__name__,
}}))
"""
    result = run_without_package(code, tmp_path / "hub", tmp_path)
    assert result["class"] == "AlbertAGPTForCausalLM"
    assert result["module"].startswith("transformers_modules.")
    assert (result["base"], result["classifier"]) == ("AlbertAGPTModel", "AlbertAGPTForSequenceClassification")
    with torch.no_grad():
        expected = model(torch.tensor(INPUT_IDS)).logits
        expected_generation = model.generate(
            torch.tensor([[5, 17, 33]]), max_new_tokens=5, min_new_tokens=5, do_sample=False
        )
    assert torch.equal(torch.tensor(result["logits"]), expected)
    assert result["generated"] == expected_generation.tolist()


OLDER_TRANSFORMERS = "5.23.0"  # its `create_causal_mask` still takes `past_key_values`, not `cache`
UPGRADE_MESSAGE = (
    f"AlbertAGPT needs transformers>={MIN_TRANSFORMERS_VERSION}, but transformers {OLDER_TRANSFORMERS} is installed. "
    f'Upgrade it: pip install "transformers>={MIN_TRANSFORMERS_VERSION}"'
)


@pytest.mark.parametrize("module", ["configuration_albertagpt", "modeling_albertagpt"])
def test_the_remote_code_files_refuse_an_older_transformers_at_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    # The two files as a Hub repo holds them, imported as transformers imports remote code: a package of their own.
    package = tmp_path / "remote_code_package"
    package.mkdir()
    (package / "__init__.py").touch()
    for name in ("configuration_albertagpt.py", "modeling_albertagpt.py"):
        shutil.copy(REPO_ROOT / "albertagpt" / name, package / name)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(transformers, "__version__", OLDER_TRANSFORMERS)
    try:
        with pytest.raises(ImportError) as error:
            importlib.import_module(f"remote_code_package.{module}")
    finally:
        for name in [name for name in sys.modules if name.startswith("remote_code_package")]:
            del sys.modules[name]
    assert str(error.value) == UPGRADE_MESSAGE


def test_a_hub_repo_tells_a_user_with_an_older_transformers_what_to_install(tmp_path: Path) -> None:
    _, folder = saved_model(tmp_path)
    make_hub_snapshot(folder, tmp_path / "hub", "org/name")
    code = f"""
import transformers
transformers.__version__ = "{OLDER_TRANSFORMERS}"
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained("org/name", trust_remote_code=True)
    error = None
except ImportError as raised:
    error = str(raised)
print(json.dumps({{"error": error}}))
"""
    assert run_without_package(code, tmp_path / "hub", tmp_path)["error"] == UPGRADE_MESSAGE


def test_the_package_requires_the_transformers_the_remote_code_needs() -> None:
    (lower_bound,) = re.findall(r'"transformers>=([0-9.]+)', (REPO_ROOT / "pyproject.toml").read_text())
    assert version.parse(lower_bound) == version.parse(MIN_TRANSFORMERS_VERSION)


def test_bfloat16_with_device_map_auto(tmp_path: Path) -> None:
    model, folder = saved_model(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in loaded.parameters()} == {"cuda" if torch.cuda.is_available() else "cpu"}
    assert loaded.lm_head.weight is loaded.model.embeddings.word_embeddings.weight
    input_ids = torch.tensor(INPUT_IDS)
    with torch.no_grad():
        bf16 = loaded(input_ids).logits.float()
        fp32 = model(input_ids).logits
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() > 0.8
    torch.testing.assert_close(bf16, fp32, atol=0.25, rtol=0.05)


@pytest.mark.parametrize("model_class", [AlbertAGPTModel, AlbertAGPTForCausalLM, AlbertAGPTForSequenceClassification])
def test_the_tensor_parallel_plan_shards_the_word_embeddings(model_class: type) -> None:
    # transformers' common tests require it of a decoder's plan: replicated, every rank holds the whole table
    plan = model_class(tiny_config()).tp_plan
    prefix = "" if model_class is AlbertAGPTModel else "model."
    assert plan[f"{prefix}embeddings.word_embeddings"] == "embedding_rowwise"
    if model_class is AlbertAGPTForCausalLM:  # tied to the embeddings, so sharded on the vocabulary too
        assert plan["lm_head"] == "colwise_gather_output"


def load_on_two_processes(parallelism: str, tmp_path: Path, **overrides) -> tuple[AlbertAGPTForCausalLM, dict]:
    """A saved model, and what `parallel_load_worker.py` measured of it loaded across two CPU processes."""
    torch.manual_seed(0)
    # Two shared blocks applied twice each; 4 heads split 2 per process under tensor parallelism.
    config = tiny_config(num_hidden_layers=4, num_hidden_groups=2, initializer_range=0.2, **overrides)
    model = AlbertAGPTForCausalLM(config)
    model.save_pretrained(tmp_path / "model")
    out_file = tmp_path / "parallel.pt"
    worker_args = (parallelism, str(tmp_path / "model"), str(out_file))
    completed = run_torchrun("tests/parallel_load_worker.py", *worker_args, tmp_path=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return model, torch.load(out_file)


def assert_same_outputs(model: AlbertAGPTForCausalLM, split: dict) -> None:
    input_ids = fixed_batch(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(split["logits"], model(input_ids).logits, rtol=0, atol=1e-5)
    continuation = model.generate(input_ids[:1], max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(split["continuation"], continuation)


@pytest.mark.parametrize("overrides", ARCHITECTURES, ids=ARCHITECTURE_IDS)
def test_tensor_parallel_loading_on_two_cpu_processes_matches_one(tmp_path: Path, overrides: dict) -> None:
    model, split = load_on_two_processes("tp", tmp_path, **overrides)
    hidden, intermediate = model.config.hidden_size, model.config.intermediate_size
    halves = {  # column-wise into each sublayer, row-wise out of it: each process holds half of every matrix
        "self_attn.q_proj": [hidden // 2, hidden],
        "self_attn.v_proj": [hidden // 2, hidden],
        "self_attn.o_proj": [hidden, hidden // 2],
        "mlp.up_proj": [intermediate // 2, hidden],
        "mlp.down_proj": [hidden, intermediate // 2],
    }
    for group in range(model.config.num_hidden_groups):
        for name, shape in halves.items():
            assert split["local_shapes"][f"model.groups.{group}.{name}.weight"] == shape, (group, name)
    # `embedding_rowwise`: rank 0 holds the first ceil(97 / 2) rows of the vocabulary; the head stays tied to them
    vocab, embedding = model.config.vocab_size, model.config.embedding_size
    assert split["local_shapes"]["model.embeddings.word_embeddings.weight"] == [(vocab + 1) // 2, embedding]
    assert split["local_shapes"]["lm_head.bias"] == [(vocab + 1) // 2]
    assert split["tied"]
    assert_same_outputs(model, split)


def test_native_fsdp_loading_on_two_cpu_processes_matches_one(tmp_path: Path) -> None:
    model, split = load_on_two_processes("fsdp", tmp_path)
    # `base_model_fsdp_plan`: one unit per shared block, the tied embeddings and head in the root unit
    assert split["fsdp_units"] == ["", "model.groups.0", "model.groups.1"]
    hidden = model.config.hidden_size
    for group in range(model.config.num_hidden_groups):  # each process holds half of every block weight's rows
        assert split["local_shapes"][f"model.groups.{group}.self_attn.q_proj.weight"] == [hidden // 2, hidden]
        assert split["local_shapes"][f"model.groups.{group}.mlp.down_proj.weight"] == [
            hidden // 2,
            model.config.intermediate_size,
        ]
    assert_same_outputs(model, split)
