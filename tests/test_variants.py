"""Norm variants of the LayerNorm lab: where the norms sit (post, pre, none), what they compute (LayerNorm,
RMSNorm, masked BatchNorm), that each trains, saves and loads, and that the default path is the architecture."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from test_modeling import make_model, random_ids, reference_logits
from transformers import AutoModelForCausalLM

from albertagpt import AlbertAGPTConfig, AlbertAGPTForCausalLM
from albertagpt.lab import batch_dependence, variant_config
from albertagpt.modeling_albertagpt import AlbertAGPTMaskedBatchNorm

VARIANTS = [
    "post-layernorm",
    "pre-layernorm",
    "none",
    "post-rmsnorm",
    "pre-rmsnorm",
    "post-batchnorm",
    "pre-batchnorm",
]
# The module names of one block of the architecture: checkpoints and the ALBERT conversion depend on them.
DEFAULT_BLOCK_PARAMETERS = [
    f"{module}.{kind}"
    for module in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "post_attention_layernorm",
        "mlp.up_proj",
        "mlp.down_proj",
        "post_feedforward_layernorm",
    )
    for kind in ("weight", "bias")
]


def variant_model(variant: str, **overrides) -> AlbertAGPTForCausalLM:
    overrides.setdefault("initializer_range", 0.3)
    torch.manual_seed(0)
    model = AlbertAGPTForCausalLM(tiny_config(**variant_config(variant), **overrides))
    model.set_attn_implementation("eager")
    return model


def written_out_forward(model: AlbertAGPTForCausalLM, input_ids: torch.Tensor) -> tuple[list[dict], tuple | None]:
    """The norm placement written out; attention and MLP are the modules' own (the spec test checks those).

    Returns, per application, `{"output": h, <norm name>: (norm input, norm output), ...}` (for `"none"` the
    identities stand under the post names), and `(input, output)` of pre-LN's final norm (else None).
    """
    base, config = model.model, model.config
    length = input_ids.shape[1]
    positions = torch.arange(length)[None]
    h = base.embedding_hidden_mapping_in(base.embeddings(base.embeddings.word_embeddings(input_ids), positions))
    causal = torch.full((length, length), float("-inf")).triu(1)[None, None]

    def norm(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        if config.norm_position == "none":
            return x
        if config.norm_type == "rmsnorm":
            return F.rms_norm(x, x.shape[-1:], module.weight, config.layer_norm_eps)
        return F.layer_norm(x, x.shape[-1:], module.weight, module.bias, config.layer_norm_eps)

    def attention(x: torch.Tensor, block: torch.nn.Module, application: int) -> torch.Tensor:
        return block.self_attn(x, causal, application)[0]

    applications = []
    for i, block in enumerate(base.layer_applications()):
        record = {}
        if config.norm_position == "pre":
            normed = norm(h, block.pre_attention_layernorm)
            record["pre_attention_layernorm"] = (h, normed)
            h = h + attention(normed, block, i)
            normed = norm(h, block.pre_feedforward_layernorm)
            record["pre_feedforward_layernorm"] = (h, normed)
            h = h + block.mlp(normed)
        else:
            x = h + attention(h, block, i)
            h = norm(x, block.post_attention_layernorm)
            record["post_attention_layernorm"] = (x, h)
            x = h + block.mlp(h)
            h = norm(x, block.post_feedforward_layernorm)
            record["post_feedforward_layernorm"] = (x, h)
        record["output"] = h
        applications.append(record)
    final = (h, norm(h, base.final_layernorm)) if config.norm_position == "pre" else None
    return applications, final


# --- the default path ------------------------------------------------------------------------------


def test_default_config_is_the_architecture_with_its_module_names() -> None:
    config = AlbertAGPTConfig()
    assert (config.norm_position, config.norm_type) == ("post", "layernorm")
    model = AlbertAGPTForCausalLM(tiny_config(num_hidden_groups=1))
    block = model.model.groups[0]
    assert [name for name, _ in block.named_parameters()] == DEFAULT_BLOCK_PARAMETERS
    assert type(block.post_attention_layernorm) is torch.nn.LayerNorm
    assert not hasattr(model.model, "final_layernorm")


@pytest.mark.parametrize("groups", [1, 2])
def test_default_logits_equal_the_spec_written_out(groups: int) -> None:
    model = make_model(num_hidden_groups=groups)
    input_ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, reference_logits(model, input_ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("field,value", [("norm_position", "middle"), ("norm_type", "groupnorm")])
def test_an_unknown_norm_setting_names_the_field(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny_config(**{field: value})


def test_an_unknown_variant_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="'post-groupnorm'.*pre-rmsnorm"):
        variant_config("post-groupnorm")


# --- variants compute what they say ------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["post-layernorm", "pre-layernorm", "none", "post-rmsnorm", "pre-rmsnorm"])
def test_norm_placement_matches_the_variant_written_out(variant: str) -> None:
    model = variant_model(variant).eval()
    input_ids = random_ids(2, 7)
    with torch.no_grad():
        output = model(input_ids, output_hidden_states=True)
        applications, final = written_out_forward(model, input_ids)
    # hidden_states: the embedding output, then one per application; the head reads the last (pre-LN: normed)
    expected = [record["output"] for record in applications]
    torch.testing.assert_close(torch.stack(output.hidden_states[1:]), torch.stack(expected))
    head_input = expected[-1] if final is None else final[1]
    torch.testing.assert_close(output.logits, model.lm_head(model.model.head_transform(head_input)))


def test_pre_ln_names_its_norms_and_adds_a_final_norm() -> None:
    model = variant_model("pre-rmsnorm")
    block = model.model.groups[0]
    assert {"pre_attention_layernorm", "pre_feedforward_layernorm"} <= dict(block.named_children()).keys()
    assert not hasattr(block, "post_attention_layernorm")
    assert isinstance(model.model.final_layernorm, torch.nn.RMSNorm)
    none = variant_model("none")
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm)) for m in none.model.groups.modules())
    assert sum(p.numel() for p in none.parameters()) < sum(
        p.numel() for p in variant_model("post-layernorm").parameters()
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains(variant: str) -> None:
    model = variant_model(variant, initializer_range=0.02).train()
    input_ids = random_ids(4, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.parametrize("variant", ["pre-layernorm", "post-rmsnorm", "post-batchnorm"])
def test_a_variant_saves_and_loads_as_that_variant(variant: str, tmp_path: Path) -> None:
    model = variant_model(variant)
    input_ids = random_ids(2, 8)
    model.train()
    model(input_ids)  # moves BatchNorm's running statistics away from their initial values
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert (loaded.config.norm_position, loaded.config.norm_type) == tuple(variant.split("-"))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits)


# --- masked BatchNorm and the variable-length check ----------------------------------------------------------


def test_masked_batchnorm_takes_statistics_from_real_tokens_only() -> None:
    torch.manual_seed(0)
    norm = AlbertAGPTMaskedBatchNorm(6, eps=1e-5).train()
    hidden = torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    hidden_with_junk_padding = hidden.masked_fill(~mask[..., None], 1e4)
    output = norm(hidden_with_junk_padding, token_mask=mask)

    real = hidden[mask]  # (10, 6): the statistics must be these tokens'
    expected = (hidden - real.mean(0)) / torch.sqrt(real.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(output[mask], expected[mask])
    torch.testing.assert_close(norm.running_mean, 0.1 * real.mean(0))
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * real.var(0, unbiased=True))
    # Without the mask the padding would leak into every real token's normalization.
    unmasked = AlbertAGPTMaskedBatchNorm(6, eps=1e-5).train()(hidden_with_junk_padding)
    assert (unmasked[mask] - expected[mask]).abs().max() > 0.5

    norm.eval()  # running statistics: each token on its own
    expected_eval = (hidden - norm.running_mean) / torch.sqrt(norm.running_var + 1e-5)
    torch.testing.assert_close(norm(hidden), expected_eval)


SEQUENCES = [[5, 17, 33, 8, 61, 40, 22, 9, 11], [9, 4, 90, 12], [70, 3, 3, 56, 81, 14]]


def test_layernorm_outputs_do_not_depend_on_the_rest_of_the_batch() -> None:
    model = variant_model("post-layernorm")
    for mode in (model.train, model.eval):
        mode()
        dependence = batch_dependence(model, SEQUENCES)
        assert max(dependence.alone_vs_batch, dependence.padding, dependence.future_tokens) < 1e-4, dependence


@pytest.mark.parametrize("sequences", [[], [[5], [6]], [[5, 6], []]])
def test_batch_dependence_names_sequences_it_cannot_test(sequences: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="got lengths"):
        batch_dependence(variant_model("post-layernorm"), sequences)


def test_training_mode_batchnorm_mixes_sequences_and_leaks_future_tokens_but_not_padding() -> None:
    model = variant_model("post-batchnorm").train()
    running_mean = model.model.groups[0].post_attention_layernorm.running_mean.clone()
    dependence = batch_dependence(model, SEQUENCES)
    assert dependence.alone_vs_batch > 1e-2, dependence
    assert dependence.future_tokens > 1e-3, dependence
    assert dependence.padding < 1e-4, dependence  # the mask keeps padding out of the statistics
    # The check ran on a copy: the model's running statistics did not move.
    torch.testing.assert_close(model.model.groups[0].post_attention_layernorm.running_mean, running_mean)

    model.eval()  # running statistics: per token again
    dependence = batch_dependence(model, SEQUENCES)
    assert max(dependence.alone_vs_batch, dependence.padding, dependence.future_tokens) < 1e-4, dependence
