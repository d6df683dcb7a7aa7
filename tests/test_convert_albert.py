"""Warm start from ALBERT: the converted model computes what ALBERT computes with causal attention."""

import io
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
from helpers import REPO_ROOT, TINY_SIZES, make_hub_snapshot
from transformers import AlbertConfig, AlbertForMaskedLM, AlbertTokenizer, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import is_sentencepiece_available

from albertagpt import AlbertAGPTForCausalLM
from albertagpt.cli import parse_recipe
from albertagpt.convert import convert_albert
from albertagpt.modeling_albertagpt import albertagpt_name_from_albert
from albertagpt.training import TrainingRecipe, train

TEXTS = list(topics.values())[:50]


def albert_tokenizer() -> AlbertTokenizer:
    """An ALBERT tokenizer (ALBERT's special tokens and normalization) over a unigram vocabulary of frequent words."""
    words = Counter(word for text in TEXTS for word in text.lower().split())
    total = sum(words.values())
    characters = sorted({character for word in words for character in word})
    vocab = [("<pad>", 0.0), ("<unk>", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0), ("▁", -3.0)]
    vocab += [(character, -10.0) for character in characters]
    vocab += [("▁" + word, math.log(count / total)) for word, count in words.most_common(200)]
    return AlbertTokenizer(vocab=vocab)


def random_albert(vocab_size: int = 101, **overrides) -> AlbertForMaskedLM:
    """A tiny ALBERT whose every parameter (biases, LayerNorms, token types too) is drawn with a large std."""
    torch.manual_seed(0)
    albert = AlbertForMaskedLM(AlbertConfig(**{"vocab_size": vocab_size, **TINY_SIZES, **overrides})).eval()
    with torch.no_grad():
        for parameter in albert.parameters():
            parameter.normal_(0.0, 0.5)
    return albert


def causal_albert_logits(albert: AlbertForMaskedLM, input_ids: torch.Tensor) -> torch.Tensor:
    """ALBERT itself, made causal by a 4D additive mask (token type 0, default positions)."""
    batch_size, length = input_ids.shape
    blocked = torch.full((length, length), torch.finfo(albert.dtype).min, dtype=albert.dtype).triu(1)
    with torch.no_grad():
        return albert(input_ids=input_ids, attention_mask=blocked.expand(batch_size, 1, length, length)).logits


def save_albert_folder(folder: Path) -> tuple[AlbertForMaskedLM, AlbertTokenizer]:
    tokenizer = albert_tokenizer()
    albert = random_albert(vocab_size=len(tokenizer))
    albert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return albert, tokenizer


@pytest.mark.parametrize("num_hidden_layers, num_hidden_groups", [(3, 1), (4, 2), (4, 4)])
def test_converted_model_computes_albert_with_causal_attention(num_hidden_layers: int, num_hidden_groups: int) -> None:
    albert = random_albert(num_hidden_layers=num_hidden_layers, num_hidden_groups=num_hidden_groups)
    model = AlbertAGPTForCausalLM.from_albert(albert)
    input_ids = torch.randint(0, albert.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids).logits
        bidirectional = albert(input_ids=input_ids).logits
    expected = causal_albert_logits(albert, input_ids)
    assert (logits - expected).abs().max() < 1e-4
    # The comparison can tell attention directions apart: ALBERT's own bidirectional logits are far off.
    assert (logits - bidirectional).abs().max() > 1e-2


def test_config_carries_albert_sizes_activation_norm_and_special_tokens() -> None:
    albert = random_albert(hidden_dropout_prob=0, attention_probs_dropout_prob=0.1)
    config = AlbertAGPTForCausalLM.from_albert(albert).config
    for field in ("vocab_size", "embedding_size", "hidden_size", "num_attention_heads", "intermediate_size"):
        assert getattr(config, field) == getattr(albert.config, field)
    assert (config.num_hidden_layers, config.num_hidden_groups) == (4, 2)
    assert (config.hidden_act, config.layer_norm_eps, config.max_position_embeddings) == ("gelu_new", 1e-12, 64)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 2, 3)
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.0, 0.1)


def test_conversion_keeps_the_tied_head_and_the_dtype() -> None:
    albert = random_albert().to(torch.bfloat16)
    model = AlbertAGPTForCausalLM.from_albert(albert)
    assert model.dtype == torch.bfloat16 and not model.training
    assert model.lm_head.weight is model.model.embeddings.word_embeddings.weight
    assert torch.equal(model.lm_head.bias, albert.predictions.bias)
    positions = (
        albert.albert.embeddings.position_embeddings.weight + albert.albert.embeddings.token_type_embeddings.weight[0]
    )
    assert torch.equal(model.model.embeddings.position_embeddings.weight, positions)


def test_unsupported_albert_variants_raise_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inner_group_num"):
        AlbertAGPTForCausalLM.from_albert(random_albert(inner_group_num=2))
    # From a folder the check comes before loading weights: this folder has none.
    AlbertConfig(position_embedding_type="relative_key").save_pretrained(tmp_path / "relative")
    with pytest.raises(ValueError, match="position_embedding_type"):
        AlbertAGPTForCausalLM.from_albert(tmp_path / "relative")
    with pytest.raises(ValueError, match="num_hidden_groups"):
        AlbertAGPTForCausalLM.from_albert(random_albert(num_hidden_layers=3, num_hidden_groups=2))


def test_inputs_that_are_not_albert_raise(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert'"):
        AlbertAGPTForCausalLM.from_albert(tmp_path / "bert")
    with pytest.raises(TypeError, match="AlbertForMaskedLM"):
        AlbertAGPTForCausalLM.from_albert(random_albert().albert)
    with pytest.raises(ValueError, match="albert.pooler.weight"):
        albertagpt_name_from_albert("albert.pooler.weight")


def test_from_a_folder_equals_from_the_model(tmp_path: Path) -> None:
    albert, _ = save_albert_folder(tmp_path / "albert")
    input_ids = torch.tensor([[2, 40, 7, 19, 200, 3]])
    with torch.no_grad():
        from_folder = AlbertAGPTForCausalLM.from_albert(tmp_path / "albert")(input_ids).logits
        from_model = AlbertAGPTForCausalLM.from_albert(albert)(input_ids).logits
    assert torch.equal(from_folder, from_model)


def test_cli_converts_a_hub_checkpoint_into_a_folder_that_tokenizes_and_generates(tmp_path: Path) -> None:
    albert, albert_tok = save_albert_folder(tmp_path / "albert")
    make_hub_snapshot(tmp_path / "albert", tmp_path / "hub", "tiny-org/albert-tiny")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    command = [sys.executable, "scripts/convert_albert.py", "--albert", "tiny-org/albert-tiny"]
    completed = subprocess.run(
        [*command, "--output_dir", str(tmp_path / "out")], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(model) is AlbertAGPTForCausalLM
    assert tokenizer.model_max_length == model.config.max_position_embeddings  # `truncation=True` fits the model
    prompt = "the class of a method"
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    # ALBERT's vocabulary and normalization, without ALBERT's `[CLS] ... [SEP]` around the text (`[SEP]` is eos).
    assert albert_tok(prompt).input_ids == [albert_tok.cls_token_id, *input_ids[0].tolist(), albert_tok.sep_token_id]
    assert (model.config.bos_token_id, model.config.eos_token_id) == (albert_tok.cls_token_id, albert_tok.sep_token_id)

    # Greedy generation with the KV cache picks what causal ALBERT picks token by token.
    generated = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=6, do_sample=False)
    expected = input_ids
    for _ in range(6):
        next_token = causal_albert_logits(albert, expected)[:, -1].argmax(-1, keepdim=True)
        expected = torch.cat([expected, next_token], dim=-1)
        if next_token.item() == model.config.eos_token_id:
            break
    assert generated.tolist() == expected.tolist()


def test_albert_tokenizer_shipped_only_as_sentencepiece_model_converts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentencepiece = pytest.importorskip("sentencepiece")
    spiece = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS),
        model_writer=spiece,
        vocab_size=300,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2,
    )
    (tmp_path / "albert").mkdir()
    (tmp_path / "albert" / "spiece.model").write_bytes(spiece.getvalue())
    random_albert(vocab_size=300).save_pretrained(tmp_path / "albert")

    convert_albert(tmp_path / "albert", tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").is_file()  # the output no longer needs sentencepiece
    pieces = sentencepiece.SentencePieceProcessor(model_proto=spiece.getvalue())
    text = "the class of a method"
    assert AutoTokenizer.from_pretrained(tmp_path / "out")(text).input_ids == pieces.encode(text)

    # Without sentencepiece the same folder stops with an error that says what to install.
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # `import sentencepiece` fails, `find_spec` finds none
    is_sentencepiece_available.cache_clear()
    try:
        with pytest.raises(ImportError, match=re.escape("pip install 'albertagpt[albert]'")):
            convert_albert(tmp_path / "albert", tmp_path / "out_without")
    finally:
        is_sentencepiece_available.cache_clear()
    assert not (tmp_path / "out_without").exists()


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_pretraining_continues_from_a_converted_folder(tmp_path: Path) -> None:
    """`scripts/train.py --model_config OUT --tokenizer OUT` starts from ALBERT's weights, not from a fresh init."""
    tokenizer = albert_tokenizer()
    torch.manual_seed(0)
    albert = AlbertForMaskedLM(
        AlbertConfig(
            vocab_size=len(tokenizer),
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    albert.save_pretrained(tmp_path / "albert")
    tokenizer.save_pretrained(tmp_path / "albert")
    converted = convert_albert(tmp_path / "albert", tmp_path / "converted")
    learning_rate, steps = 1e-3, 3
    recipe = parse_recipe(
        TrainingRecipe,
        ["--config", str(REPO_ROOT / "configs" / "train" / "tiny.yaml"), "--model_config", str(converted)]
        + ["--tokenizer", str(converted), "--output_dir", str(tmp_path / "run"), "--block_size", "32"]
        + ["--max_steps", str(steps), "--warmup_steps", "0", "--learning_rate", str(learning_rate)]
        + ["--eval_steps", str(steps), "--max_eval_batches", "2", "--checkpointing_steps", str(steps)]
        + ["--per_device_train_batch_size", "4", "--report_to", "none"],
    )
    result = train(recipe)

    start = AlbertAGPTForCausalLM.from_pretrained(converted)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert trained.config.to_diff_dict() | {"transformers_version": None} == start.config.to_diff_dict() | {
        "transformers_version": None
    }
    assert AutoTokenizer.from_pretrained(tmp_path / "run").get_vocab() == tokenizer.get_vocab()
    assert math.isfinite(result.final_eval_loss)
    # AdamW moves a weight by about the learning rate per step: the run started from ALBERT's weights.
    start_weights = dict(start.named_parameters())
    changes = [(weight - start_weights[name]).abs().max().item() for name, weight in trained.named_parameters()]
    assert max(changes) <= 1.5 * learning_rate * steps
    assert max(changes) > 0
