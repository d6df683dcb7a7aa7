"""The model computes what the architecture spec says, with and without caches, across attention backends."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from albertagpt import AlbertAGPTForCausalLM, AlbertAGPTModel

torch.manual_seed(0)


# The plain architecture, and the same with every post-LN stabiliser set: caches, generation and checkpointing must
# work alike for both.
ARCHITECTURES = [{}, {"residual_alpha": 1.7, "residual_init_scale": 0.4, "b2t_connection": True}]
ARCHITECTURE_IDS = ["plain", "stabilised"]


def make_model(attn_implementation: str = "eager", **overrides) -> AlbertAGPTForCausalLM:
    # A large init makes attention far from uniform, so cache and masking bugs change the numbers.
    overrides.setdefault("initializer_range", 0.5)
    torch.manual_seed(0)
    model = AlbertAGPTForCausalLM(tiny_config(**overrides))
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def random_ids(batch: int, length: int, vocab_size: int = 97) -> torch.Tensor:
    return torch.randint(3, vocab_size, (batch, length))


def reference_logits(model: AlbertAGPTForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """The forward pass of ARCHITECTURE.md written out with plain torch ops on the model's parameters."""
    config = model.config
    params = dict(model.named_parameters(remove_duplicate=False))

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], params[f"{name}.weight"], params[f"{name}.bias"], config.layer_norm_eps)

    gelu = torch.nn.GELU(approximate="tanh")
    batch, length = input_ids.shape
    positions = torch.arange(length)
    embeddings = params["model.embeddings.word_embeddings.weight"][input_ids]
    embeddings = embeddings + params["model.embeddings.position_embeddings.weight"][positions]
    h = linear(layer_norm(embeddings, "model.embeddings.LayerNorm"), "model.embedding_hidden_mapping_in")

    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for i in range(config.num_hidden_layers):
        g = f"model.groups.{i * config.num_hidden_groups // config.num_hidden_layers}"

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, heads, head_dim).transpose(1, 2)

        q, k, v = (split(linear(h, f"{g}.self_attn.{p}_proj")) for p in "qkv")
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        attention = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        attention = attention.transpose(1, 2).reshape(batch, length, config.hidden_size)
        # The post-LN stabilisers: skip multiplier alpha (DeepNorm), and the block input x added to the last sum (B2T).
        alpha, x = config.residual_alpha, h
        h = layer_norm(alpha * h + linear(attention, f"{g}.self_attn.o_proj"), f"{g}.post_attention_layernorm")
        mlp = linear(gelu(linear(h, f"{g}.mlp.up_proj")), f"{g}.mlp.down_proj")
        h = layer_norm(alpha * h + mlp + (x if config.b2t_connection else 0), f"{g}.post_feedforward_layernorm")

    z = layer_norm(gelu(linear(h, "model.head_transform.dense")), "model.head_transform.LayerNorm")
    return z @ params["model.embeddings.word_embeddings.weight"].T + params["lm_head.bias"]


# --- architecture ---------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_forward_matches_the_spec_written_out(groups: int, attn_implementation: str) -> None:
    model = make_model(attn_implementation, num_hidden_groups=groups)
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, reference_logits(model, input_ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hidden_dropout_prob", [0.0, 0.3])
def test_hidden_dropout_acts_only_in_training(hidden_dropout_prob: float) -> None:
    model = make_model("sdpa", hidden_dropout_prob=hidden_dropout_prob)
    # without dropout, no `nn.Dropout` modules at all: decoding pays no call for them
    dropouts = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    assert len(dropouts) == (0 if hidden_dropout_prob == 0 else 1 + model.config.num_hidden_groups)
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        spec = reference_logits(model, input_ids)
        torch.testing.assert_close(model(input_ids).logits, spec, atol=1e-4, rtol=1e-4)  # eval: no dropout
        model.train()
        first, second = model(input_ids).logits, model(input_ids).logits
    if hidden_dropout_prob == 0:
        torch.testing.assert_close(first, spec, atol=1e-4, rtol=1e-4)
    else:
        assert (first - second).abs().max() > 0.1  # fresh masks per call, after the embeddings and each sublayer
        assert (first - spec).abs().max() > 0.1


def test_factorized_embeddings_and_tied_factorized_head() -> None:
    config = tiny_config()
    model = AlbertAGPTForCausalLM(config)
    word_embeddings = model.model.embeddings.word_embeddings
    assert word_embeddings.weight.shape == (config.vocab_size, config.embedding_size)
    assert model.model.embedding_hidden_mapping_in.weight.shape == (config.hidden_size, config.embedding_size)
    assert model.model.head_transform.dense.weight.shape == (config.embedding_size, config.hidden_size)
    # weight tying: the decoder is the embedding matrix itself, not a copy
    assert model.lm_head.weight is word_embeddings.weight
    assert model.lm_head.bias.shape == (config.vocab_size,)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_parameter_count(config) -> int:
    """V*E + P*E + LN_E + (E*H + H) + G * block + head (dense H->E, LN_E, decoder bias; decoder weight tied)."""
    v, e, h, p, f = (
        config.vocab_size,
        config.embedding_size,
        config.hidden_size,
        config.max_position_embeddings,
        config.intermediate_size,
    )
    block = 4 * (h * h + h) + 2 * 2 * h + (h * f + f) + (f * h + h)
    head = (h * e + e) + 2 * e + v
    return v * e + p * e + 2 * e + (e * h + h) + config.num_hidden_groups * block + head


@pytest.mark.parametrize("layers,groups", [(1, 1), (4, 1), (8, 1), (4, 2), (4, 4)])
def test_parameter_count_depends_on_groups_not_depth(layers: int, groups: int) -> None:
    config = tiny_config(num_hidden_layers=layers, num_hidden_groups=groups)
    assert count_parameters(AlbertAGPTForCausalLM(config)) == expected_parameter_count(config)


def test_group_assignment_follows_albert() -> None:
    model = AlbertAGPTModel(tiny_config(num_hidden_layers=6, num_hidden_groups=3))
    assigned = [list(model.groups).index(block) for block in model.layer_applications()]
    assert assigned == [0, 0, 1, 1, 2, 2]


def test_post_layernorm_normalizes_every_block_output_at_init() -> None:
    model = AlbertAGPTForCausalLM(tiny_config(num_hidden_layers=6, num_hidden_groups=2)).eval()
    with torch.no_grad():
        hidden_states = model(random_ids(2, 10), output_hidden_states=True).hidden_states
    for block_output in hidden_states[1:]:
        torch.testing.assert_close(block_output.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)
        torch.testing.assert_close(block_output.var(-1, unbiased=False), torch.ones(2, 10), atol=1e-3, rtol=0)


def test_hidden_states_and_attentions_have_one_entry_per_layer_application() -> None:
    model = make_model("eager", num_hidden_layers=6, num_hidden_groups=2)
    with torch.no_grad():
        outputs = model(random_ids(2, 9), output_hidden_states=True, output_attentions=True)
    assert len(outputs.hidden_states) == 6 + 1  # the embedding output, then one per application
    assert len(outputs.attentions) == 6
    for attention in outputs.attentions:
        assert attention.shape == (2, 4, 9, 9)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, 9))
        assert attention.triu(diagonal=1).abs().max() == 0  # causal
    # Shared weights, different inputs: applications of the same block see different states.
    assert not torch.allclose(outputs.attentions[0], outputs.attentions[1])


# --- KV cache and generation ---------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=ARCHITECTURE_IDS)
@pytest.mark.parametrize("groups", [1, 2])
def test_incremental_decoding_equals_full_forward(groups: int, architecture: dict) -> None:
    model = make_model("sdpa", num_hidden_groups=groups, **architecture)
    input_ids = random_ids(2, 14)
    with torch.no_grad():
        full = model(input_ids).logits
        prefix = model(input_ids[:, :8], use_cache=True)
        cache, steps = prefix.cache, [prefix.logits]
        for t in range(8, 14):
            step = model(input_ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = step.cache
            steps.append(step.logits)
    # One cache slot per application, each holding its own keys.
    assert len(cache.layers) == model.config.num_hidden_layers
    assert not torch.equal(cache.layers[0].keys, cache.layers[1].keys)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=ARCHITECTURE_IDS)
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_greedy_generation_with_cache_equals_without(cache_implementation: str, architecture: dict) -> None:
    model = make_model("sdpa", num_hidden_groups=2, **architecture)
    prompt = random_ids(2, 5)
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    no_cache = model.generate(prompt, use_cache=False, **kwargs)
    with_cache = model.generate(prompt, cache_implementation=cache_implementation, **kwargs)
    assert no_cache.shape == (2, 17)
    assert torch.equal(with_cache, no_cache)


# `fullgraph=True` fails on any graph break; the "aot_eager" backend traces forward and backward the way inductor
# does but skips its code generation (a minute per graph on 2 cores), which is torch's to get right, not ours.
def test_static_cache_generation_compiles_without_graph_breaks() -> None:
    model = make_model("sdpa", num_hidden_groups=2)
    prompt = random_ids(2, 5)
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0, cache_implementation="static")
    eager = model.generate(prompt, **kwargs)
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, fullgraph=True, backend="aot_eager")
    assert torch.equal(model.generate(prompt, **kwargs), eager)


def test_left_padded_batch_generation_equals_each_row_alone() -> None:
    model = make_model("sdpa")
    rows = [random_ids(1, 7), random_ids(1, 4)]
    padded = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, -row.shape[1] :] = row
        mask[i, -row.shape[1] :] = 1
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    batched = model.generate(padded, attention_mask=mask, **kwargs)
    for i, row in enumerate(rows):
        alone = model.generate(row, **kwargs)
        assert torch.equal(batched[i, -8:], alone[0, -8:])


# --- attention backends ----------------------------------------------------------------------------


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = random_ids(3, 10)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding
    attention_mask[2, 7:] = 0  # right padding
    return input_ids, attention_mask


# flex attention compiles its kernel on first use (about 10 s per shape on 2 cores): one padded batch covers it.
@pytest.mark.parametrize("attn_implementation", ["sdpa", "flex_attention"])
def test_attention_backends_give_the_same_logits_as_eager_with_padding(attn_implementation: str) -> None:
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        eager = make_model("eager")(input_ids, attention_mask=attention_mask).logits
        other = make_model(attn_implementation)(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    # float32 rounding of the large init's activations differs by up to ~3e-5 on logits of ~7; a mask bug gives ~1
    torch.testing.assert_close(other[real], eager[real], atol=1e-4, rtol=1e-5)


def test_padding_does_not_change_real_tokens() -> None:
    model = make_model("sdpa")
    input_ids = random_ids(1, 6)
    padded = torch.cat([input_ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, attention_mask=mask).logits[:, :6], model(input_ids).logits, atol=1e-5, rtol=1e-5
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention needs a CUDA GPU")
def test_flash_attention_matches_sdpa_on_gpu() -> None:
    pytest.importorskip("flash_attn")
    input_ids, attention_mask = padded_batch()
    input_ids, attention_mask = input_ids.cuda(), attention_mask.cuda()
    with torch.no_grad():
        sdpa = make_model("sdpa").cuda().to(torch.bfloat16)(input_ids, attention_mask=attention_mask).logits
        flash = make_model("flash_attention_2").cuda().to(torch.bfloat16)(input_ids, attention_mask=attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(flash.logits[real].float(), sdpa[real].float(), atol=5e-2, rtol=5e-2)


# --- loss ----------------------------------------------------------------------------------------


def test_labels_give_the_shifted_cross_entropy_ignoring_minus_100() -> None:
    model = make_model("sdpa")
    input_ids = random_ids(2, 10)
    labels = input_ids.clone()
    labels[0, :4] = -100
    outputs = model(input_ids, labels=labels)
    expected = F.cross_entropy(outputs.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(outputs.loss, expected)


def test_loss_is_exact_under_gradient_accumulation() -> None:
    """Two micro-batches with `num_items_in_batch` sum to the loss and gradients of one big batch."""
    model = make_model("sdpa")
    input_ids = random_ids(4, 10)
    labels = input_ids.clone()
    labels[0, :7] = -100  # uneven token counts per micro-batch: a plain mean would be wrong
    full = model(input_ids, labels=labels).loss
    full.backward()
    full_grad = model.model.embedding_hidden_mapping_in.weight.grad.clone()
    model.zero_grad()

    num_items = (labels[:, 1:] != -100).sum()
    accumulated = sum(
        model(input_ids[part], labels=labels[part], num_items_in_batch=num_items).loss
        for part in (slice(0, 2), slice(2, 4))
    )
    accumulated.backward()
    torch.testing.assert_close(accumulated, full)
    torch.testing.assert_close(model.model.embedding_hidden_mapping_in.weight.grad, full_grad)


# --- training features ---------------------------------------------------------------------------


def gradients(model: AlbertAGPTForCausalLM, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(input_ids, labels=input_ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=ARCHITECTURE_IDS)
def test_gradient_checkpointing_gives_the_same_gradients(architecture: dict) -> None:
    model = make_model("sdpa", initializer_range=0.02, **architecture)
    model.train()
    input_ids = random_ids(2, 12)
    plain = gradients(model, input_ids)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = gradients(model, input_ids)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_compiled_training_step_gives_the_same_loss_and_gradients() -> None:
    model = make_model("sdpa", num_hidden_groups=2, initializer_range=0.02)
    model.train()
    input_ids = random_ids(2, 12)
    eager = gradients(model, input_ids)
    torch._dynamo.reset()
    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")  # shares the parameters
    model.zero_grad()
    loss = compiled_model(input_ids, labels=input_ids, use_cache=False).loss
    loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(loss, model(input_ids, labels=input_ids).loss)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, eager[name], atol=1e-6, rtol=1e-5, msg=name)

    # with dropout on, the training step still compiles as one graph (its random masks differ from eager's)
    dropout_model = make_model("sdpa", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    compiled_dropout_model = torch.compile(dropout_model, fullgraph=True, backend="aot_eager")
    compiled_dropout_model(input_ids, labels=input_ids, use_cache=False).loss.backward()
    assert all(parameter.grad is not None for parameter in dropout_model.parameters())


def test_resize_token_embeddings_keeps_the_head_tied() -> None:
    model = make_model("sdpa")
    input_ids = random_ids(1, 6)
    with torch.no_grad():
        before = model(input_ids).logits
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert model.lm_head.weight is model.model.embeddings.word_embeddings.weight
    assert model.lm_head.weight.shape == (120, 16)
    assert model.lm_head.bias.shape == (120,)
    with torch.no_grad():
        after = model(input_ids).logits
    torch.testing.assert_close(after[..., :97], before)  # old tokens score as before


# --- bad input -----------------------------------------------------------------------------------


def test_a_sequence_longer_than_max_position_embeddings_names_the_field() -> None:
    model = make_model("sdpa", max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(random_ids(1, 17))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(random_ids(1, 4), position_ids=torch.tensor([[13, 14, 15, 16]]))
    cache = model(random_ids(1, 12), use_cache=True).cache
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(random_ids(1, 5), cache=cache)
    assert model(random_ids(1, 16)).logits.shape == (1, 16, 97)  # exactly the maximum is fine
    with pytest.raises(ValueError, match="`position_ids` must not be negative, got -1"):
        model(random_ids(1, 3), position_ids=torch.tensor([[-1, 0, 1]]))


def test_generation_past_max_position_embeddings_names_the_field() -> None:
    model = make_model("sdpa", max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(random_ids(1, 10), max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
