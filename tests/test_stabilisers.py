"""The post-LN residual stabilisers: `residual_alpha` and `residual_init_scale` (DeepNorm), `b2t_connection` (the
bottom-to-top connection). Each is a no-op at its default; set, the forward pass is the formula written out, with
both attention backends, and a saved model loads its weights unchanged. Caches, generation and gradient
checkpointing (`test_modeling.py`), remote code and tensor parallelism (`test_save_load.py`) are tested with the
stabilisers too."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from test_modeling import ARCHITECTURES, make_model, random_ids, reference_logits
from transformers import AutoModelForCausalLM

from albertagpt import AlbertAGPTConfig, AlbertAGPTForCausalLM, deepnorm_settings

STABILISED = [{"residual_alpha": 1.7}, {"b2t_connection": True}, ARCHITECTURES[1]]


def test_defaults_are_no_ops_and_old_configs_load_as_before(tmp_path: Path) -> None:
    config = AlbertAGPTConfig()
    assert (config.residual_alpha, config.residual_init_scale, config.b2t_connection) == (1.0, 1.0, False)
    # A config.json written before the fields existed.
    saved = tiny_config().to_dict()
    for field in ("residual_alpha", "residual_init_scale", "b2t_connection"):
        del saved[field]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AlbertAGPTConfig.from_pretrained(tmp_path)
    assert (loaded.residual_alpha, loaded.residual_init_scale, loaded.b2t_connection) == (1.0, 1.0, False)


def test_deepnorm_settings_are_the_papers_constants_for_layer_applications() -> None:
    settings = deepnorm_settings(24)
    assert settings["residual_alpha"] == pytest.approx(48**0.25)  # (2N)^(1/4): 2.632
    assert settings["residual_init_scale"] == pytest.approx(192**-0.25)  # (8N)^(-1/4): 0.269
    config = tiny_config(num_hidden_layers=24, num_hidden_groups=1, **settings)
    assert config.residual_alpha == pytest.approx(2.632, abs=1e-3)
    with pytest.raises(ValueError, match="`num_hidden_layers`"):
        deepnorm_settings(0)


@pytest.mark.parametrize("stabilisers", STABILISED)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_forward_matches_the_formula_written_out(stabilisers: dict, attn_implementation: str) -> None:
    model = make_model(attn_implementation, **stabilisers)
    plain = make_model(attn_implementation)
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        logits = model(input_ids).logits
        torch.testing.assert_close(logits, reference_logits(model, input_ids), atol=1e-4, rtol=1e-4)
        assert (logits - plain(input_ids).logits).abs().max() > 1e-2  # the formula is not the plain one


def test_b2t_adds_the_block_input_to_the_last_layernorm_only() -> None:
    """`LayerNorm(alpha * h1 + MLP(h1) + x)`: x is the block's input, h1 the first LayerNorm's output."""
    model = make_model(residual_alpha=1.5, b2t_connection=True, num_hidden_groups=1)
    block = model.model.groups[0]
    x = torch.randn(2, 5, model.config.hidden_size)
    captured = {}
    block.post_attention_layernorm.register_forward_hook(lambda m, args, out: captured.update(h1_in=args[0], h1=out))
    block.post_feedforward_layernorm.register_forward_hook(lambda m, args, out: captured.update(h2_in=args[0]))
    causal = torch.full((5, 5), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        block(x, attention_mask=causal, layer_idx=0)
        attention = block.self_attn(x, causal, 0)[0]
        torch.testing.assert_close(captured["h1_in"], 1.5 * x + attention)  # alpha on the skip, not the sublayer
        h1 = captured["h1"]
        torch.testing.assert_close(captured["h2_in"], 1.5 * h1 + block.mlp(h1) + x)


def test_residual_init_scale_multiplies_the_initial_residual_projections_only() -> None:
    torch.manual_seed(0)
    plain = AlbertAGPTForCausalLM(tiny_config())
    torch.manual_seed(0)
    scaled = AlbertAGPTForCausalLM(tiny_config(residual_init_scale=0.25))
    plain_parameters = dict(plain.named_parameters())
    changed = set()
    for name, parameter in scaled.named_parameters():
        if torch.equal(parameter, plain_parameters[name]):
            continue
        torch.testing.assert_close(parameter, 0.25 * plain_parameters[name])
        changed.add(name.removeprefix("model.groups.").split(".", 1)[1])
    assert changed == {
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    }


def test_loaded_weights_are_not_scaled_again(tmp_path: Path) -> None:
    model = make_model(**STABILISED[2])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config.b2t_connection and loaded.config.residual_alpha == 1.7
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)
    input_ids = random_ids(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits)


@pytest.mark.parametrize(
    "field,value",
    [
        ("residual_alpha", 0.0),
        ("residual_alpha", -1.0),
        ("residual_init_scale", math.nan),
        ("residual_alpha", math.inf),
    ],
)
def test_a_non_positive_or_non_finite_value_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny_config(**{field: value})


@pytest.mark.parametrize(
    "field,value", [("residual_alpha", 2.0), ("residual_init_scale", 0.5), ("b2t_connection", True)]
)
@pytest.mark.parametrize("norm_position", ["pre", "none"])
def test_a_stabiliser_outside_post_ln_names_the_field(field: str, value: object, norm_position: str) -> None:
    with pytest.raises(ValueError, match=f"`{field}`.*`norm_position`"):
        tiny_config(**{field: value, "norm_position": norm_position})
