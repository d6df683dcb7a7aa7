"""Per-application diagnostics against values computed by hand, with shared weights, gradient accumulation and
checkpointing, and through `transformers.Trainer`."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_modeling import random_ids
from test_variants import variant_model, written_out_forward
from transformers import Trainer, TrainingArguments

from albertagpt.diagnostics import DiagnosticsCallback, DiagnosticsRecorder, diagnose_batch


def rms(tensor: torch.Tensor) -> float:
    return tensor.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("variant", ["post-layernorm", "pre-layernorm", "none"])
def test_diagnostics_equal_values_computed_by_hand(variant: str) -> None:
    model = variant_model(variant, num_hidden_layers=4, num_hidden_groups=2)  # applications 0,1 -> group 0; 2,3 -> 1
    by_hand = copy.deepcopy(model)
    input_ids = random_ids(2, 8)
    learning_rate = 0.05
    stats = diagnose_batch(model, {"input_ids": input_ids}, torch.optim.SGD(model.parameters(), lr=learning_rate))

    applications, final = written_out_forward(by_hand, input_ids)
    logits = by_hand.lm_head(by_hand.model.head_transform(final[1] if final else applications[-1]["output"]))
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())
    outputs = [record["output"] for record in applications]
    groups = [list(block.parameters()) for block in by_hand.model.groups]
    grads = torch.autograd.grad(loss, outputs + [p for group in groups for p in group])
    output_grads, parameter_grads = grads[: len(outputs)], grads[len(outputs) :]

    assert [(row.application, row.group) for row in stats.applications] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    for row, record, grad in zip(stats.applications, applications, output_grads, strict=True):
        assert row.residual_grad_norm == pytest.approx(grad.norm().item(), rel=1e-4)
        assert row.output_rms == pytest.approx(rms(record["output"]), rel=1e-5)
        norms = {name: pair for name, pair in record.items() if name != "output"}
        assert row.norm_rms.keys() == norms.keys()
        for name, (norm_input, norm_output) in norms.items():
            assert row.norm_rms[name] == pytest.approx((rms(norm_input), rms(norm_output)), rel=1e-5)
    if final is None:
        assert stats.final_norm_rms is None
    else:
        assert stats.final_norm_rms == pytest.approx((rms(final[0]), rms(final[1])), rel=1e-5)

    # Shared weights: one gradient per group, summed over its applications; SGD moves W by lr * grad.
    per_group = len(groups[0])
    for index, row in enumerate(stats.groups):
        group_grads = parameter_grads[index * per_group : (index + 1) * per_group]
        grad_norm = math.sqrt(sum(g.pow(2).sum().item() for g in group_grads))
        weight_norm = math.sqrt(sum(p.pow(2).sum().item() for p in groups[index]))
        assert row.applications == [2 * index, 2 * index + 1]
        assert row.grad_norm == pytest.approx(grad_norm, rel=1e-4)
        assert row.update_to_weight == pytest.approx(learning_rate * grad_norm / weight_norm, rel=1e-3)

    metrics = stats.to_metrics()
    assert metrics["diagnostics/application_02/residual_grad_norm"] == stats.applications[2].residual_grad_norm
    assert metrics["diagnostics/group_1/update_to_weight"] == stats.groups[1].update_to_weight
    table = stats.to_table()
    assert len(table.splitlines()) == 1 + 4 + (final is not None) + 1 + 1 + 2 + 1 + 1 + 4 + 1


@pytest.mark.parametrize("variant", ["post-layernorm", "pre-layernorm"])
def test_below_the_blocks_and_collapse_signal_equal_values_computed_by_hand(variant: str) -> None:
    model = variant_model(variant, num_hidden_layers=4, num_hidden_groups=2)
    by_hand = copy.deepcopy(model)
    input_ids = random_ids(3, 8)
    stats = diagnose_batch(model, {"input_ids": input_ids})

    entering = {}
    by_hand.model.embedding_hidden_mapping_in.register_forward_hook(lambda m, a, out: entering.update(h0=out))
    output = by_hand(input_ids, labels=input_ids, output_hidden_states=True)
    base = by_hand.model
    parameters = [
        base.embeddings.word_embeddings.weight,
        base.embeddings.position_embeddings.weight,
        base.embedding_hidden_mapping_in.weight,
    ]
    input_grad, *parameter_grads = torch.autograd.grad(output.loss, [entering["h0"], *parameters])
    assert stats.input_residual_grad_norm == pytest.approx(input_grad.norm().item(), rel=1e-4)
    expected = {
        "embeddings.word_embeddings.weight": parameter_grads[0].norm().item(),  # tied: the head's gradient too
        "embeddings.position_embeddings.weight": parameter_grads[1].norm().item(),
        "embedding_hidden_mapping_in.weight": parameter_grads[2].norm().item(),
    }
    assert stats.embedding_grad_norms == pytest.approx(expected, rel=1e-4)

    final = output.hidden_states[-1] if variant == "post-layernorm" else base.final_layernorm(output.hidden_states[-1])
    unit = F.normalize(final, dim=-1)
    cosines = unit @ unit.transpose(1, 2)  # (batch, T, T)
    off_diagonal = ~torch.eye(8, dtype=torch.bool)
    assert stats.final_hidden_cosine == pytest.approx(cosines[:, off_diagonal].mean().item(), rel=1e-4)
    metrics = stats.to_metrics()
    assert metrics["diagnostics/final_hidden_cosine"] == stats.final_hidden_cosine
    position_grad_norm = stats.embedding_grad_norms["embeddings.position_embeddings.weight"]
    assert metrics["diagnostics/embeddings/position_embeddings/grad_norm"] == position_grad_norm
    assert metrics["diagnostics/input_residual_grad_norm"] == stats.input_residual_grad_norm


def test_identical_positions_give_a_collapse_signal_of_one() -> None:
    # A model that sees the same token at every position with positions embedded as zeros computes the same final
    # hidden state everywhere: cosine 1, as in a run that predicts the unigram distribution at every position.
    model = variant_model("post-layernorm")
    with torch.no_grad():
        model.model.embeddings.position_embeddings.weight.zero_()
    model.model.set_attn_implementation("eager")
    stats = diagnose_batch(model, {"input_ids": torch.full((2, 6), 7)})
    assert stats.final_hidden_cosine == pytest.approx(1.0, abs=1e-5)
    distinct = diagnose_batch(variant_model("post-layernorm", initializer_range=0.02), {"input_ids": random_ids(2, 6)})
    assert distinct.final_hidden_cosine < 0.5, distinct.final_hidden_cosine


def test_pads_stay_out_of_the_loss_as_in_training() -> None:
    # Without labels, positions the attention mask marks as padding are not predicted, as the training collator
    # labels them: the same statistics as with those labels given.
    model = variant_model("post-layernorm")
    input_ids = random_ids(2, 8)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    implied = diagnose_batch(model, {"input_ids": input_ids, "attention_mask": attention_mask})
    given = diagnose_batch(model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    unmasked = diagnose_batch(model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": input_ids})
    assert implied.applications[0].residual_grad_norm == given.applications[0].residual_grad_norm
    assert implied.applications[0].residual_grad_norm != unmasked.applications[0].residual_grad_norm


def test_post_layernorm_outputs_have_unit_rms_at_init() -> None:
    # gamma = 1, beta = 0: each token has mean 0 and variance v / (v + eps), so the RMS is just below 1.
    stats = diagnose_batch(variant_model("post-layernorm"), {"input_ids": random_ids(2, 8)})
    for row in stats.applications:
        assert row.output_rms == pytest.approx(1.0, abs=1e-3)
        assert row.norm_rms["post_attention_layernorm"][1] == pytest.approx(1.0, abs=1e-3)
    assert all(row.update_to_weight is None for row in stats.groups)  # no optimizer, no step


@pytest.mark.parametrize("variant", ["post-layernorm", "pre-layernorm"])
def test_accumulated_micro_batches_are_recorded_as_one_batch(variant: str) -> None:
    model = variant_model(variant, num_hidden_layers=4, num_hidden_groups=2)
    micro_batches = (random_ids(2, 8), random_ids(2, 8))
    whole_batch = diagnose_batch(copy.deepcopy(model), {"input_ids": torch.cat(micro_batches)})
    recorder = DiagnosticsRecorder(model)
    recorder.start()
    for input_ids in micro_batches:  # as a training loop accumulates: each loss divided by the number of batches
        (model(input_ids, labels=input_ids).loss / len(micro_batches)).backward()
    stats = recorder.collect()
    # Residual gradients, every RMS and the groups' gradients cover both micro-batches, as for the whole batch.
    assert stats.to_metrics() == pytest.approx(whole_batch.to_metrics(), rel=1e-4)
    for row, block in zip(stats.groups, model.model.groups, strict=True):
        expected = math.sqrt(sum(p.grad.pow(2).sum().item() for p in block.parameters()))
        assert row.grad_norm == pytest.approx(expected, rel=1e-5)

    model.zero_grad()
    model(random_ids(2, 8)).logits.sum().backward()  # not armed: nothing is recorded
    assert recorder.collect().applications == []
    recorder.remove()
    assert all(not module._forward_hooks for module in model.modules())


def test_gradient_checkpointing_records_each_application_once() -> None:
    input_ids = random_ids(2, 8)
    plain = diagnose_batch(variant_model("pre-layernorm").train(), {"input_ids": input_ids})
    model = variant_model("pre-layernorm").train()
    model.gradient_checkpointing_enable()
    checkpointed = diagnose_batch(model, {"input_ids": input_ids})
    assert checkpointed.to_metrics() == pytest.approx(plain.to_metrics(), rel=1e-5)


def test_trainer_callback_logs_every_logging_step(tmp_path: Path) -> None:
    model = variant_model("post-layernorm", initializer_range=0.02)
    data = [{"input_ids": ids, "labels": ids} for ids in random_ids(8, 12)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        logging_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = DiagnosticsCallback()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()

    assert [row["step"] for row in callback.history] == [2, 4]
    for row in callback.history:
        for application in range(4):
            assert row[f"diagnostics/application_{application:02d}/residual_grad_norm"] > 0
        for group in range(2):
            assert row[f"diagnostics/group_{group}/grad_norm"] > 0
            # AdamW's first steps move every weight by about lr: the ratio is lr * sqrt(n) / ||W|| in size
            assert 1e-4 < row[f"diagnostics/group_{group}/update_to_weight"] < 1e-1
    logged = [row for row in trainer.state.log_history if "diagnostics/group_0/grad_norm" in row]
    assert [row["step"] for row in logged] == [2, 4]
    assert list((tmp_path / "diagnostics").glob("events.out.tfevents.*"))
    assert all(not module._forward_hooks for module in model.modules())  # hooks removed at the end

    # The same callback in a second run follows that run's logging steps.
    args.logging_steps = 1
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    assert [row["step"] for row in callback.history] == [2, 4, 1, 2, 3, 4]
