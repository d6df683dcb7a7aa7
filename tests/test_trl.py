"""TRL's trainers fine-tune AlbertAGPT: their fused LM head (`last_hidden_state @ lm_head.weight.T + bias`, only on the
labelled positions) gives exactly the loss the model computes itself from its logits."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from helpers import tiny_config
from transformers import PreTrainedTokenizerFast
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from albertagpt import AlbertAGPTForCausalLM
from albertagpt.data import builtin_corpus
from albertagpt.tokenizer import train_tokenizer

TEXTS = [text[:300] for text in builtin_corpus("train")[:16]]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(TEXTS, vocab_size=300)


def tiny_model(tokenizer: PreTrainedTokenizerFast) -> AlbertAGPTForCausalLM:
    torch.manual_seed(0)
    return AlbertAGPTForCausalLM(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=128))


def trainer_arguments(config_class: type, output_dir: Path, **overrides):
    fields = dict(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        bf16=False,  # TRL autocasts to bf16 by default; in float32 "the same loss" is a tight comparison
    )
    return config_class(**{**fields, **overrides})


def own_token_log_probs(model: AlbertAGPTForCausalLM, batch: dict, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next-token label under the model's own logits (zero where the label is -100)."""
    inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "position_ids") if name in batch}
    logits = model(**inputs).logits[:, :-1]
    targets = labels[:, 1:]
    log_probs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return log_probs * (targets != -100)


TEXT_COLUMNS = {"text": TEXTS}
PROMPT_COMPLETION_COLUMNS = {"prompt": [text[:40] for text in TEXTS], "completion": [text[40:120] for text in TEXTS]}


@pytest.mark.parametrize(
    ("kind", "columns", "packing"),
    [
        ("text", TEXT_COLUMNS, False),
        ("packed text", TEXT_COLUMNS, True),
        ("prompt-completion", PROMPT_COMPLETION_COLUMNS, False),
    ],
    ids=["text", "packed-text", "prompt-completion"],
)
def test_sft_trainer_loss_is_the_model_loss(
    kind: str, columns: dict, packing: bool, tokenizer, tmp_path: Path, fresh_accelerate_state
) -> None:
    """After a few steps, the trainer's loss on a batch is the model's `loss` on it, and the fused head's per-token
    log-probabilities are the log-softmax of the model's logits."""
    model = tiny_model(tokenizer)
    args = trainer_arguments(SFTConfig, tmp_path, max_length=64, packing=packing)
    dataset = Dataset.from_dict(columns)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)

    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()
    with torch.no_grad():
        trainer_loss = trainer.compute_loss(model, dict(batch))
        fused = model(**batch, fused_lm_head=True)
        own_loss = model(**batch).loss
        own_log_probs = own_token_log_probs(model, batch, batch["labels"])
    if kind == "packed text":  # padding-free packing: one row, positions restarting at each sequence
        assert batch["input_ids"].shape[0] == 1 and (batch["position_ids"] == 0).sum() > 1
    if kind == "prompt-completion":  # only the completion is learned
        assert (batch["labels"][batch["attention_mask"].bool()] == -100).any()
    torch.testing.assert_close(fused.log_probs, own_log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(trainer_loss, own_loss, rtol=1e-6, atol=1e-6)


def test_dpo_trainer_loss_is_dpo_of_the_model_log_probs(tokenizer, tmp_path: Path, fresh_accelerate_state) -> None:
    """After a few steps, the trainer's loss on a batch is DPO's loss computed from the log-softmax of the logits of
    the model and of its reference."""
    model = tiny_model(tokenizer)
    reference = copy.deepcopy(model).eval()
    pairs = Dataset.from_dict(
        {
            "prompt": [text[:40] for text in TEXTS],
            "chosen": [text[40:100] for text in TEXTS],
            "rejected": [text[100:140] for text in TEXTS],
        }
    )
    args = trainer_arguments(DPOConfig, tmp_path, max_length=64, learning_rate=3e-3)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3

    batch = next(iter(trainer.get_train_dataloader()))  # chosen rows, then rejected rows
    model.eval()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        trainer_loss = trainer.compute_loss(model, dict(batch))
        chosen, rejected = own_token_log_probs(model, batch, labels).sum(1).chunk(2)
        reference_chosen, reference_rejected = own_token_log_probs(reference, batch, labels).sum(1).chunk(2)
    margin = (chosen - reference_chosen) - (rejected - reference_rejected)
    own_loss = -F.logsigmoid(args.beta * margin).mean()  # DPO's sigmoid loss
    assert margin.abs().max() > 1e-3  # the policy moved away from the reference
    torch.testing.assert_close(trainer_loss, own_loss, rtol=1e-6, atol=1e-6)
