"""Config validation names the field at fault; presets load and build."""

from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, tiny_config
from transformers import AutoConfig

from albertagpt import AlbertAGPTConfig, AlbertAGPTForCausalLM, deepnorm_settings


@pytest.mark.parametrize(
    "fields,named",
    [
        (dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
        (dict(num_hidden_layers=4, num_hidden_groups=3), "num_hidden_groups"),
        (dict(num_hidden_layers=2, num_hidden_groups=4), "num_hidden_groups"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(embedding_size=-1), "embedding_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(num_hidden_groups=0), "num_hidden_groups"),
        (dict(num_attention_heads=0), "num_attention_heads"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(max_position_embeddings=0), "max_position_embeddings"),
        (dict(hidden_act="not_an_activation"), "hidden_act"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(attention_probs_dropout_prob=-0.1), "attention_probs_dropout_prob"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(initializer_range=-0.02), "initializer_range"),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(fields: dict, named: str) -> None:
    with pytest.raises(ValueError, match=f"`{named}`"):
        AlbertAGPTConfig(**fields)


def test_invalid_config_json_is_rejected_on_load(tmp_path: Path) -> None:
    AlbertAGPTConfig(num_hidden_layers=4, num_hidden_groups=2).save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text().replace('"num_hidden_groups": 2', '"num_hidden_groups": 3')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="`num_hidden_groups`"):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "override,named",
    [
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(num_hidden_groups=3), "num_hidden_groups"),
        (dict(hidden_act="not_an_activation"), "hidden_act"),
    ],
)
def test_from_pretrained_overrides_are_validated_like_the_config(tmp_path: Path, override: dict, named: str) -> None:
    AlbertAGPTForCausalLM(tiny_config()).save_pretrained(tmp_path)  # 4 layers, 2 groups, hidden 32
    with pytest.raises(ValueError, match=f"`{named}`"):
        AlbertAGPTForCausalLM.from_pretrained(tmp_path, **override)


def test_dropouts_may_be_written_as_integers() -> None:
    written_by_hand = {**tiny_config().to_dict(), "hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0}
    config = AlbertAGPTConfig.from_dict(written_by_hand)
    assert config.hidden_dropout_prob == 0 and config.attention_probs_dropout_prob == 0
    AlbertAGPTForCausalLM(config)


def test_a_null_auto_map_is_filled_in() -> None:
    config = tiny_config()
    config.auto_map = None
    assert AlbertAGPTForCausalLM(config).config.auto_map["AutoModelForCausalLM"].endswith("AlbertAGPTForCausalLM")


def test_defaults_match_the_spec() -> None:
    config = AlbertAGPTConfig()
    assert config.model_type == "albertagpt"
    assert (config.vocab_size, config.embedding_size, config.hidden_size) == (32000, 128, 768)
    assert (config.num_hidden_layers, config.num_hidden_groups, config.num_attention_heads) == (12, 1, 12)
    assert (config.intermediate_size, config.max_position_embeddings) == (3072, 1024)
    assert config.hidden_act == "gelu_pytorch_tanh"
    assert config.layer_norm_eps == 1e-5 and config.tie_word_embeddings


def test_config_round_trips_through_auto_config(tmp_path: Path) -> None:
    config = AlbertAGPTConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=6, num_hidden_groups=3)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, AlbertAGPTConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()


PRESET_SIZES = {  # (hidden, layers, heads, parameters in millions, rounded to 0.1)
    "tiny": (128, 4, 4, 0.8),
    "base": (768, 12, 12, 11.3),
    "large": (1024, 24, 16, 16.9),
    "xlarge": (2048, 24, 16, 54.9),
    "xxlarge": (4096, 12, 64, 206.4),
}


@pytest.mark.parametrize("name", sorted(PRESET_SIZES))
def test_presets_load_and_build(name: str) -> None:
    config = AlbertAGPTConfig.from_json_file(REPO_ROOT / "configs" / "model" / f"{name}.json")
    hidden, layers, heads, millions = PRESET_SIZES[name]
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (hidden, layers, heads)
    assert config.embedding_size in (64, 128)
    with torch.device("meta"):  # no memory for the big ones
        model = AlbertAGPTForCausalLM(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions


# The stabilisers each preset carries (docs/stability.md, "Depth"): B2T from 12 applications on, DeepNorm's
# constants too at 24, where the lab measured the combination best.
PRESET_STABILISERS = {  # (b2t_connection, DeepNorm's constants)
    "tiny": (False, False),
    "base": (True, False),
    "xxlarge": (True, False),
    "large": (True, True),
    "xlarge": (True, True),
}


@pytest.mark.parametrize("name", sorted(PRESET_STABILISERS))
def test_presets_carry_the_stabilisers_the_lab_supports(name: str) -> None:
    config = AlbertAGPTConfig.from_json_file(REPO_ROOT / "configs" / "model" / f"{name}.json")
    b2t, deepnorm = PRESET_STABILISERS[name]
    assert config.b2t_connection is b2t
    expected = deepnorm_settings(config.num_hidden_layers) if deepnorm else {"residual_alpha": 1.0}
    expected.setdefault("residual_init_scale", 1.0)
    assert {"residual_alpha": config.residual_alpha, "residual_init_scale": config.residual_init_scale} == expected
