"""Per-application gradient and activation statistics of an AlbertAGPT model (the LayerNorm lab).

What is recorded, for one optimizer step:

- per layer *application* `i` (a block shared by several applications is hooked on every call): the gradient norm
  of the residual stream leaving the application (dLoss/dh_i over the whole batch), the RMS of that output, and
  the RMS of the input and of the output of each of the block's norms;
- per weight *group* (shared weights have one gradient, summed over the group's applications, so these numbers
  are per group, not per application): the gradient norm of all the group's parameters, taken as each backward
  pass leaves it (before clipping; on this process, before any cross-process reduction), and the
  update-to-weight ratio `||W_after - W_before|| / ||W_before||` of the optimizer step;
- for pre-LN models, the RMS before and after the final norm;
- below the blocks: the gradient norm of the residual stream entering the first application (what reaches the
  embeddings through the stack), and the parameter gradient norms of `word_embeddings` (tied to the head's decoder,
  so it includes the head's gradient), `position_embeddings` and `embedding_hidden_mapping_in`, next to the groups';
- a collapse signal: `final_hidden_cosine`, the mean cosine similarity between the final hidden states of different
  positions of a sequence. Near 1, the model reads every position alike: it predicts the same distribution
  everywhere, which is how a run stalled at the unigram loss looks from the inside.

The RMS at the input of a norm is the divisor of the gradient passing back through it: LayerNorm's Jacobian scales
as gamma / RMS(input), so a norm input RMS above 1 at every application shrinks the gradient geometrically with
depth (post-LN's vanishing gradient).

RMS values are over every element of the batch, padding included. A step of several micro-batches (gradient
accumulation) is recorded as one batch: its statistics combine the sums of squares of every micro-batch. Three ways
in: `diagnose_batch` (one batch, a table), `DiagnosticsCallback` (a `transformers.Trainer`), and
`DiagnosticsRecorder` (any loop; `train --diagnostics`).
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .modeling_albertagpt import AlbertAGPTModel

# Attribute names of the norms inside a block; which exist depends on `config.norm_position`.
BLOCK_NORM_NAMES = (
    "pre_attention_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
FINAL_NORM = "final_layernorm"
# Parameters below the blocks whose gradient norms are recorded, by their names in the base model.
EMBEDDING_PARAMETERS = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embedding_hidden_mapping_in.weight",
)


@dataclass
class ApplicationStats:
    application: int
    group: int
    residual_grad_norm: float | None  # None when no backward pass ran
    output_rms: float
    norm_rms: dict[str, tuple[float, float]]  # norm name -> (RMS of its input, RMS of its output)


@dataclass
class GroupStats:
    group: int
    applications: list[int]
    grad_norm: float | None  # of all the group's parameters together; None without a backward pass
    update_to_weight: float | None  # None without an optimizer step


@dataclass
class LayerDiagnostics:
    applications: list[ApplicationStats]
    groups: list[GroupStats]
    final_norm_rms: tuple[float, float] | None = None  # pre-LN only
    input_residual_grad_norm: float | None = None  # ||dLoss/dh|| entering application 0; None without backward
    embedding_grad_norms: dict[str, float] | None = None  # EMBEDDING_PARAMETERS name -> gradient norm
    final_hidden_cosine: float | None = None  # mean cosine similarity of final hidden states across positions

    def to_metrics(self, prefix: str = "diagnostics") -> dict[str, float]:
        """Flat scalars for `metrics.jsonl` and TensorBoard, e.g. `diagnostics/application_03/residual_grad_norm`."""
        metrics = {}
        for stats in self.applications:
            name = f"{prefix}/application_{stats.application:02d}"
            if stats.residual_grad_norm is not None:
                metrics[f"{name}/residual_grad_norm"] = stats.residual_grad_norm
            metrics[f"{name}/output_rms"] = stats.output_rms
            for norm, (rms_in, rms_out) in stats.norm_rms.items():
                metrics[f"{name}/{norm}_rms_in"] = rms_in
                metrics[f"{name}/{norm}_rms_out"] = rms_out
        for stats in self.groups:
            if stats.grad_norm is not None:
                metrics[f"{prefix}/group_{stats.group}/grad_norm"] = stats.grad_norm
            if stats.update_to_weight is not None:
                metrics[f"{prefix}/group_{stats.group}/update_to_weight"] = stats.update_to_weight
        if self.final_norm_rms is not None:
            metrics[f"{prefix}/{FINAL_NORM}_rms_in"], metrics[f"{prefix}/{FINAL_NORM}_rms_out"] = self.final_norm_rms
        if self.input_residual_grad_norm is not None:
            metrics[f"{prefix}/input_residual_grad_norm"] = self.input_residual_grad_norm
        for name, grad_norm in (self.embedding_grad_norms or {}).items():
            metrics[f"{prefix}/{name.removesuffix('.weight').replace('.', '/')}/grad_norm"] = grad_norm
        if self.final_hidden_cosine is not None:
            metrics[f"{prefix}/final_hidden_cosine"] = self.final_hidden_cosine
        return metrics

    def to_table(self) -> str:
        """A plain-text table: one row per application, then one per weight group."""

        def number(value: float | None) -> str:
            return "-" if value is None else f"{value:.3g}"

        norms = list(self.applications[0].norm_rms) if self.applications else []
        header = ["application", "group", "residual grad", "output RMS", *(f"{norm} RMS in -> out" for norm in norms)]
        rows = [
            [
                str(stats.application),
                str(stats.group),
                number(stats.residual_grad_norm),
                number(stats.output_rms),
                *(f"{number(rms_in)} -> {number(rms_out)}" for rms_in, rms_out in stats.norm_rms.values()),
            ]
            for stats in self.applications
        ]
        lines = [format_table(header, rows)]
        if self.final_norm_rms is not None:
            lines.append(
                f"{FINAL_NORM} RMS in -> out: {number(self.final_norm_rms[0])} -> {number(self.final_norm_rms[1])}"
            )
        group_rows = [
            [
                str(stats.group),
                ",".join(map(str, stats.applications)),
                number(stats.grad_norm),
                number(stats.update_to_weight),
            ]
            for stats in self.groups
        ]
        lines += ["", format_table(["group", "applications", "param grad norm", "update/weight"], group_rows)]
        below = [("residual stream entering application 0", self.input_residual_grad_norm)]
        below += list((self.embedding_grad_norms or {}).items())
        lines += [
            "",
            format_table(["below the blocks", "grad norm"], [[name, number(value)] for name, value in below]),
        ]
        lines.append(f"final hidden states, mean cosine across positions: {number(self.final_hidden_cosine)}")
        return "\n".join(lines)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join(
        " | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]
    )


def base_model_of(model: nn.Module) -> AlbertAGPTModel:
    """The `AlbertAGPTModel` inside a causal LM, a classifier, a PEFT model or the base model itself."""
    for module in model.modules():
        if isinstance(module, AlbertAGPTModel):
            return module
    raise TypeError(f"{type(model).__name__} holds no AlbertAGPTModel to diagnose.")


# A running sum of squares and element count: what an RMS or a norm over all micro-batches of a step needs.
SquareSum = tuple[torch.Tensor, int]


def add_squares(totals: dict, key: object, tensor: torch.Tensor) -> None:
    squares, count = totals.get(key, (0.0, 0))
    totals[key] = (squares + tensor.detach().float().pow(2).sum(), count + tensor.numel())


def root_mean(total: SquareSum) -> float:
    squares, count = total
    return math.sqrt(float(squares) / count)


class DiagnosticsRecorder:
    """Hooks on an AlbertAGPT model (and optionally its optimizer) that record one step when armed.

    Call `start()` before the forward pass of a step to record, and `collect()` after its optimizer step (or after
    the backward pass when there is no optimizer); the hooks do nothing in steps that are not armed. `remove()`
    takes the hooks off. Under gradient checkpointing the recomputation in the backward pass is not recorded twice.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
        self.model = base_model_of(model)
        self.group_of_application = [list(self.model.groups).index(block) for block in self.model.layer_applications()]
        self.active = False
        self.current_application: int | None = None  # set only while an application's forward runs
        self.handles = []
        for group_index, block in enumerate(self.model.groups):
            self.handles.append(block.register_forward_pre_hook(self.enter_application, with_kwargs=True))
            self.handles.append(block.register_forward_hook(self.leave_application))
            for norm_name in BLOCK_NORM_NAMES:
                if hasattr(block, norm_name):
                    self.handles.append(getattr(block, norm_name).register_forward_hook(self.norm_hook(norm_name)))
            for parameter in block.parameters():
                self.handles.append(parameter.register_post_accumulate_grad_hook(self.grad_hook(group_index)))
        if hasattr(self.model, FINAL_NORM):
            self.handles.append(getattr(self.model, FINAL_NORM).register_forward_hook(self.final_norm_hook))
        self.handles.append(self.model.embedding_hidden_mapping_in.register_forward_hook(self.leave_embeddings))
        # The final hidden states are what the head reads: the head transform's input, or the output of a base model
        # built without it (a classifier's).
        if self.model.head_transform is not None:
            self.handles.append(self.model.head_transform.register_forward_pre_hook(self.enter_head_transform))
        else:
            self.handles.append(self.model.register_forward_hook(self.leave_model))
        parameters = dict(self.model.named_parameters(remove_duplicate=False))
        for name in EMBEDDING_PARAMETERS:
            self.handles.append(parameters[name].register_post_accumulate_grad_hook(self.embedding_grad_hook(name)))
        if optimizer is not None:
            optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper steps the torch optimizer
            self.handles.append(optimizer.register_step_pre_hook(self.before_optimizer_step))
            self.handles.append(optimizer.register_step_post_hook(self.after_optimizer_step))
        self.clear()

    # --- recording -------------------------------------------------------------------------------------------

    def clear(self) -> None:
        self.residual_grad_squares: dict[int, SquareSum] = {}  # application -> over its outputs' gradients
        self.output_squares: dict[int, SquareSum] = {}  # application -> over its outputs
        self.norm_squares: dict[tuple[int, str, str], SquareSum] = {}  # (application, norm, "in"/"out") -> ...
        self.final_norm_squares: dict[str, SquareSum] = {}  # "in"/"out" -> ...
        self.input_grad_squares: dict[str, SquareSum] = {}  # "input" -> over the gradient entering application 0
        self.embedding_grad_squares: dict[str, torch.Tensor] = {}  # parameter name -> ||grad||^2
        self.cosine_sums: tuple[torch.Tensor | float, int] = (0.0, 0)  # summed over sequences, and their count
        self.grad_squares: dict[int, dict[int, torch.Tensor]] = {}  # group -> id(parameter) -> ||grad||^2
        self.weights_before: dict[int, list[torch.Tensor]] = {}
        self.update_to_weight: dict[int, float] = {}

    def start(self) -> None:
        """Record the next forward, backward and optimizer step."""
        self.clear()
        self.active = True

    def enter_application(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        self.current_application = kwargs["layer_idx"]

    def leave_application(self, block: nn.Module, args: tuple, output: torch.Tensor) -> None:
        application, self.current_application = self.current_application, None
        if not self.active:
            return
        add_squares(self.output_squares, application, output)
        if output.requires_grad:

            def record_grad(grad: torch.Tensor) -> None:
                add_squares(self.residual_grad_squares, application, grad)

            output.register_hook(record_grad)

    def norm_hook(self, norm_name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def record(norm: nn.Module, args: tuple, output: torch.Tensor) -> None:
            # No application is current while the backward pass recomputes a checkpointed block: skip those calls.
            if self.active and self.current_application is not None:
                add_squares(self.norm_squares, (self.current_application, norm_name, "in"), args[0])
                add_squares(self.norm_squares, (self.current_application, norm_name, "out"), output)

        return record

    def leave_embeddings(self, mapping: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.active and output.requires_grad:

            def record_grad(grad: torch.Tensor) -> None:
                add_squares(self.input_grad_squares, "input", grad)

            output.register_hook(record_grad)

    def enter_head_transform(self, head_transform: nn.Module, args: tuple) -> None:
        self.record_final_hidden(args[0])

    def leave_model(self, model: nn.Module, args: tuple, output: object) -> None:
        self.record_final_hidden(output.last_hidden_state)

    def record_final_hidden(self, hidden: torch.Tensor) -> None:
        if not self.active:
            return
        hidden = hidden.detach().float()  # (batch, positions, hidden)
        positions = hidden.shape[1]
        if positions < 2:
            return
        # Mean cosine over pairs of distinct positions: (|sum of unit vectors|^2 - T) / (T (T - 1)) per sequence.
        unit = nn.functional.normalize(hidden, dim=-1)
        per_sequence = (unit.sum(1).pow(2).sum(-1) - positions) / (positions * (positions - 1))
        total, count = self.cosine_sums
        self.cosine_sums = (total + per_sequence.sum(), count + per_sequence.numel())

    def embedding_grad_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def record(parameter: torch.Tensor) -> None:
            if self.active:
                self.embedding_grad_squares[name] = parameter.grad.detach().float().pow(2).sum()

        return record

    def final_norm_hook(self, norm: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.active:
            add_squares(self.final_norm_squares, "in", args[0])
            add_squares(self.final_norm_squares, "out", output)

    def grad_hook(self, group: int) -> Callable[[torch.Tensor], None]:
        def record(parameter: torch.Tensor) -> None:
            # Fires after each backward has accumulated into `.grad`: the last call of a step sees its full gradient.
            if self.active:
                self.grad_squares.setdefault(group, {})[id(parameter)] = parameter.grad.detach().float().pow(2).sum()

        return record

    def group_parameters(self) -> list[list[torch.Tensor]]:
        return [list(block.parameters()) for block in self.model.groups]

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self.active:
            for group, parameters in enumerate(self.group_parameters()):
                self.weights_before[group] = [parameter.detach().float().clone() for parameter in parameters]

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self.active:
            return
        for group, parameters in enumerate(self.group_parameters()):
            before = self.weights_before.pop(group)
            update = sum((p.detach().float() - b).pow(2).sum() for p, b in zip(parameters, before, strict=True))
            weight = sum(b.pow(2).sum() for b in before)
            self.update_to_weight[group] = math.sqrt(float(update)) / max(math.sqrt(float(weight)), 1e-12)

    # --- results ---------------------------------------------------------------------------------------------

    def collect(self) -> LayerDiagnostics:
        """The recorded step's statistics (then forgotten); recording stops until the next `start()`."""
        self.active = False
        applications = [
            ApplicationStats(
                application=i,
                group=group,
                residual_grad_norm=math.sqrt(float(self.residual_grad_squares[i][0]))
                if i in self.residual_grad_squares
                else None,
                output_rms=root_mean(self.output_squares[i]),
                norm_rms={
                    name: (root_mean(self.norm_squares[i, name, "in"]), root_mean(self.norm_squares[i, name, "out"]))
                    for name in BLOCK_NORM_NAMES
                    if (i, name, "in") in self.norm_squares
                },
            )
            for i, group in enumerate(self.group_of_application)
            if i in self.output_squares
        ]
        groups = [
            GroupStats(
                group=group,
                applications=[i for i, g in enumerate(self.group_of_application) if g == group],
                grad_norm=math.sqrt(sum(float(v) for v in self.grad_squares[group].values()))
                if group in self.grad_squares
                else None,
                update_to_weight=self.update_to_weight.get(group),
            )
            for group in range(len(self.model.groups))
        ]
        final = None
        if self.final_norm_squares:
            final = (root_mean(self.final_norm_squares["in"]), root_mean(self.final_norm_squares["out"]))
        input_grad = self.input_grad_squares.get("input")
        cosine_total, sequences = self.cosine_sums
        diagnostics = LayerDiagnostics(
            applications,
            groups,
            final,
            input_residual_grad_norm=None if input_grad is None else math.sqrt(float(input_grad[0])),
            embedding_grad_norms={
                name: math.sqrt(float(squares)) for name, squares in self.embedding_grad_squares.items()
            },
            final_hidden_cosine=float(cosine_total) / sequences if sequences else None,
        )
        self.clear()
        return diagnostics

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def diagnose_batch(
    model: nn.Module, batch: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None
) -> LayerDiagnostics:
    """Statistics of one forward and backward pass on `batch` (and, given `optimizer`, of one real step with it).

    `batch` holds the model's inputs (`input_ids`, `attention_mask`, ...); without `labels`, a causal LM predicts
    its `input_ids` where `attention_mask` (if given) marks real tokens, as the training collator labels them.
    Gradients already in `.grad` are cleared first, and this batch's are left there. The model
    stays in its current mode (call `model.train()` for training-mode statistics).

    ```python
    >>> stats = diagnose_batch(model, {"input_ids": input_ids})
    >>> print(stats.to_table())
    ```
    """
    inputs = dict(batch)
    if "labels" not in inputs:
        mask = inputs.get("attention_mask")
        inputs["labels"] = inputs["input_ids"] if mask is None else inputs["input_ids"].masked_fill(mask == 0, -100)
    recorder = DiagnosticsRecorder(model, optimizer)
    try:
        model.zero_grad(set_to_none=True)
        recorder.start()
        model(**inputs).loss.backward()
        if optimizer is not None:
            optimizer.step()
        return recorder.collect()
    finally:
        recorder.remove()


class DiagnosticsCallback(TrainerCallback):
    """Records `LayerDiagnostics` during `Trainer.train`, every `every_n_steps` optimizer steps (default: the
    `logging_steps` of the `TrainingArguments`).

    `Trainer` calls its reporting integrations before user callbacks, so the callback writes its scalars itself:
    each recorded step becomes a row `{"diagnostics/...": ..., "step": ...}` of `trainer.state.log_history` (saved
    in `trainer_state.json`) and, when TensorBoard is among `report_to`, scalars of a TensorBoard run in
    `<output_dir>/diagnostics`. The rows are also kept in `history`.

    ```python
    >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[DiagnosticsCallback()])
    ```
    """

    def __init__(self, every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps <= 0:
            raise ValueError(f"`every_n_steps` must be a positive integer, got {every_n_steps}.")
        self.every_n_steps = every_n_steps
        self.interval = every_n_steps  # the steps between recordings in the current run
        self.history: list[dict[str, float]] = []
        self.recorder: DiagnosticsRecorder | None = None
        self.writer = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs,
    ) -> None:
        if model is None:  # `Trainer` always passes it; a hand-driven callback handler might not
            raise ValueError("DiagnosticsCallback.on_train_begin needs the `model` it should watch.")
        self.recorder = DiagnosticsRecorder(model, optimizer)
        self.interval = self.every_n_steps
        if self.interval is None:  # each run's own logging steps (the callback may serve several runs)
            logging_steps = args.logging_steps  # a fraction (< 1) of the training run, or a step count
            self.interval = max(
                1, math.ceil(state.max_steps * logging_steps) if logging_steps < 1 else int(logging_steps)
            )
        report_to = args.report_to if isinstance(args.report_to, list) else [args.report_to]
        if state.is_world_process_zero and ("tensorboard" in report_to or "all" in report_to):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(args.output_dir) / "diagnostics"))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if (state.global_step + 1) % self.interval == 0:
            self.recorder.start()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if not self.recorder.active:
            return
        metrics = self.recorder.collect().to_metrics()
        self.history.append({"step": state.global_step, **metrics})
        state.log_history.append({**metrics, "step": state.global_step})
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, state.global_step)
            self.writer.flush()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.recorder.remove()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = [
    "ApplicationStats",
    "DiagnosticsCallback",
    "DiagnosticsRecorder",
    "GroupStats",
    "LayerDiagnostics",
    "diagnose_batch",
]
