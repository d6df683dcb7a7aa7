"""Side-by-side benchmark of AlbertAGPT against transformers' GPT-2 at the same shape.

Both models get the same hidden size, depth, heads, MLP width, vocabulary and sequence length, run
through the same transformers API (`model(input_ids, labels=...)`, `generate()`), and are measured in
one process, interleaved step by step so that both see the same machine noise. Three peers:

- `albertagpt`: one shared block (`num_hidden_groups=1`), `embedding_size` 128, SDPA attention.
- `gpt2`: `GPT2LMHeadModel` with transformers' defaults for everything but the shape (its `gelu_new`
  activation written in Python, dropout 0.1): GPT-2 as the library ships it.
- `gpt2_matched`: the same GPT-2 with AlbertAGPT's activation kernel and dropout (0.0), so both models
  do the same work per layer; the only differences left are the architectures'.

What is measured: training tokens/s (forward + backward + AdamW step), FLOPs per step counted by
`FlopCounterMode` and the MFU they give against this run's own measured matmul peak, `generate()`
tokens/s with a KV cache (and with a static cache + `torch.compile`), peak training memory, and how
training cost grows with sequence length and with depth at fixed (shared) parameters.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from .configuration_albertagpt import AlbertAGPTConfig
from .modeling_albertagpt import AlbertAGPTForCausalLM

MODEL_NAMES = ("albertagpt", "gpt2", "gpt2_matched")
# The peer the targets (TARGETS) are stated against: GPT-2 as transformers ships it.
PEER = "gpt2"
# Special token ids shared by both models (AlbertAGPT's defaults); random inputs avoid them.
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = 0, 1, 2
FIRST_ORDINARY_TOKEN = 3
# Generation results: (section of the results, prefix of its ratio keys, table label).
GENERATION_SECTIONS = (
    ("generation", "generate", "generate tokens/s"),
    ("generation_static_compiled", "generate_static_compiled", "static cache + compile tokens/s"),
)

# (metric key in `ratios`, minimum AlbertAGPT / GPT-2 ratio); memory is "at most 1.0" (lower is better).
TARGETS = {
    "training_tokens_per_s": 1.30,
    "mfu": 1.15,
    "generate_tokens_per_s_batch_1": 1.5,
    "generate_tokens_per_s_batch_8": 1.3,
    "peak_train_memory": 1.0,
}


@dataclass(frozen=True)
class BenchmarkShape:
    """The shape both models share. `embedding_size` applies to AlbertAGPT only (GPT-2 has none)."""

    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    intermediate_size: int = 2048
    vocab_size: int = 8192
    seq_len: int = 256
    batch_size: int = 8
    embedding_size: int = 128
    max_positions: int = 1024

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads` ({self.num_heads})."
            )
        if self.seq_len > self.max_positions:
            raise ValueError(f"`seq_len` ({self.seq_len}) exceeds `max_positions` ({self.max_positions}).")
        if self.vocab_size <= FIRST_ORDINARY_TOKEN:
            raise ValueError(f"`vocab_size` ({self.vocab_size}) must leave room beyond the special tokens.")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class BenchmarkSettings:
    """How much to measure, and where."""

    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    train_steps: int = 10
    warmup_steps: int = 2
    prompt_len: int = 32
    new_tokens: int = 64
    generate_batch_sizes: tuple[int, ...] = (1, 8)
    generate_repeats: int = 5
    scaling_seq_lens: tuple[int, ...] = (128, 256, 512, 1024)
    scaling_depths: tuple[int, ...] = (2, 4, 8, 16)
    scaling_steps: int = 3
    matmul_size: int | None = None  # None: 2048 on CPU, 8192 on GPU (large enough to reach the peak)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"`dtype` must be 'float32' or 'bfloat16', got {self.dtype!r}.")
        for name in ("train_steps", "generate_repeats", "scaling_steps", "new_tokens", "prompt_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.matmul_size is not None and self.matmul_size <= 0:
            raise ValueError(f"`matmul_size` must be positive, got {self.matmul_size}.")
        if self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be non-negative, got {self.warmup_steps}.")


# A shape and settings small enough to run everything in seconds (tests, `--quick`).
QUICK_SHAPE = BenchmarkShape(
    hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256, vocab_size=512, seq_len=32, batch_size=2,
    embedding_size=16, max_positions=128,
)  # fmt: skip
QUICK_SETTINGS = BenchmarkSettings(
    train_steps=2, warmup_steps=1, prompt_len=8, new_tokens=4, generate_repeats=2, scaling_seq_lens=(16, 32),
    scaling_depths=(1, 2), scaling_steps=1, matmul_size=256,
)  # fmt: skip


def gpt2_lm_head_model(config: GPT2Config) -> GPT2LMHeadModel:
    """transformers picks a model's loss by its class name, and `GPT2LMHeadModel` names none: without this it warns
    (`loss_type=None ... unrecognized`) and falls back to the causal-LM loss, which is the right one."""
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    return model


def build_model(name: str, shape: BenchmarkShape, attn_implementation: str = "sdpa", seed: int = 0) -> PreTrainedModel:
    """One of `MODEL_NAMES` at `shape`, freshly initialized from `seed`."""
    albert_config = AlbertAGPTConfig(
        vocab_size=shape.vocab_size,
        embedding_size=shape.embedding_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_hidden_groups=1,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_positions,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        attn_implementation=attn_implementation,
    )
    gpt2_shape = {
        "vocab_size": shape.vocab_size,
        "n_embd": shape.hidden_size,
        "n_layer": shape.num_layers,
        "n_head": shape.num_heads,
        "n_inner": shape.intermediate_size,
        "n_positions": shape.max_positions,
        "pad_token_id": PAD_TOKEN_ID,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "attn_implementation": attn_implementation,
    }
    torch.manual_seed(seed)
    if name == "albertagpt":
        return AlbertAGPTForCausalLM(albert_config)
    if name == "gpt2":
        return gpt2_lm_head_model(GPT2Config(**gpt2_shape))
    if name == "gpt2_matched":
        matched = GPT2Config(
            **gpt2_shape,
            activation_function=albert_config.hidden_act,
            resid_pdrop=albert_config.hidden_dropout_prob,
            embd_pdrop=albert_config.hidden_dropout_prob,
            attn_pdrop=albert_config.attention_probs_dropout_prob,
            layer_norm_epsilon=albert_config.layer_norm_eps,
        )
        return gpt2_lm_head_model(matched)
    raise ValueError(f"Unknown model name {name!r}; choose one of {MODEL_NAMES}.")


def count_parameters(name: str, shape: BenchmarkShape) -> int:
    """Distinct parameters (tied weights counted once), counted on the meta device without allocating."""
    with torch.device("meta"):
        return build_model(name, shape).num_parameters()


def random_tokens(batch_size: int, seq_len: int, vocab_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """Token ids that avoid the special tokens, so EOS or padding never changes the work done."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(FIRST_ORDINARY_TOKEN, vocab_size, (batch_size, seq_len), generator=generator)
    return tokens.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_context(device: torch.device, dtype: str) -> torch.autocast:
    """bf16 runs keep fp32 master weights and compute under autocast, as mixed-precision training does."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def train_step(
    model: Callable[..., Any], optimizer: torch.optim.Optimizer, input_ids: torch.Tensor, dtype: str = "float32"
) -> torch.Tensor:
    """Forward + backward + AdamW step; `use_cache=False` because training never reads a KV cache."""
    with autocast_context(input_ids.device, dtype):
        loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _attention_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * sdpa_flop_count(query, key, value)


# Model FLOPs, whichever kernel runs: FlopCounterMode has no formula for the CPU flash kernel, and it credits the
# fused backward kernels with recomputing the scores (2.5x the forward) where the math path's bmms do 2x.
ATTENTION_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_backward: _attention_backward_flop,
    torch.ops.aten._scaled_dot_product_efficient_attention_backward: _attention_backward_flop,
    torch.ops.aten._scaled_dot_product_cudnn_attention_backward: _attention_backward_flop,
}


def count_training_flops(model: PreTrainedModel, input_ids: torch.Tensor, dtype: str = "float32") -> int:
    """Model FLOPs of one forward + backward: matmuls and attention (the backward counted as twice the forward),
    not the elementwise work or the optimizer. Attention is counted in full: causal masking is ignored, as
    FlopCounterMode does, for both models alike.
    """
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS) as counter:
        with autocast_context(input_ids.device, dtype):
            loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure_matmul_peak(device: torch.device, dtype: str, size: int = 2048, repeats: int = 10) -> float:
    """This machine's best square-matmul throughput in FLOP/s, in the run's dtype: the MFU denominator."""
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    best = float("inf")
    for repeat in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        if repeat >= 2:  # the first calls pay for thread pools and kernel selection
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def measure_training(
    models: dict[str, Callable[..., Any]],
    input_ids: torch.Tensor,
    steps: int,
    warmup_steps: int,
    dtype: str = "float32",
) -> dict[str, dict[str, Any]]:
    """Training tokens/s of each model: the median of `steps` step times after `warmup_steps`.

    The models take turns step by step (the order alternating every round), so slow phases of a shared
    machine hit all of them alike. Each model gets a fresh AdamW (torch's defaults, lr 1e-4).
    """
    optimizers = {name: torch.optim.AdamW(_parameters_of(model), lr=1e-4) for name, model in models.items()}
    step_times: dict[str, list[float]] = {name: [] for name in models}
    device = input_ids.device
    names = list(models)
    for round_index in range(warmup_steps + steps):
        for name in names if round_index % 2 == 0 else reversed(names):
            synchronize(device)
            start = time.perf_counter()
            train_step(models[name], optimizers[name], input_ids, dtype)
            synchronize(device)
            if round_index >= warmup_steps:
                step_times[name].append(time.perf_counter() - start)
    del optimizers
    gc.collect()
    tokens = input_ids.numel()
    return {
        name: {
            "median_step_s": statistics.median(times),
            "tokens_per_s": tokens / statistics.median(times),
            "step_times_s": times,
        }
        for name, times in step_times.items()
    }


def _parameters_of(model: Callable[..., Any]) -> list[torch.nn.Parameter]:
    # A `torch.compile`d module forwards `.parameters()` to the original one.
    return list(model.parameters())


def measure_generation(
    models: dict[str, PreTrainedModel],
    batch_size: int,
    prompt_len: int,
    new_tokens: int,
    repeats: int,
    seed: int = 0,
    dtype: str = "float32",
    static_compiled: bool = False,
) -> dict[str, dict[str, Any]]:
    """Greedy `generate()` tokens/s with a KV cache: exactly `new_tokens` per row (EOS cannot stop it early).

    With `static_compiled`, the cache is transformers' `StaticCache` and each model's forward is compiled
    with `torch.compile` (the prefill and the decode shapes are compiled during the warm-up call).
    """
    first = next(iter(models.values()))
    device = first.device
    prompt = random_tokens(batch_size, prompt_len, first.config.vocab_size, seed, device)
    generate_kwargs = {
        "attention_mask": torch.ones_like(prompt),
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": PAD_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
    }
    if static_compiled:
        generate_kwargs["cache_implementation"] = "static"
        # The forward is compiled here, with the mode below; transformers would otherwise compile it once more on
        # GPUs (its automatic compilation of static-cache generation).
        generate_kwargs["disable_compile"] = True
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    was_training = {name: model.training for name, model in models.items()}
    try:
        for model in models.values():
            model.eval()
            if static_compiled:
                model.forward = torch.compile(model.forward, mode=_compile_mode(device))
        with torch.inference_mode(), autocast_context(device, dtype):
            for round_index in range(repeats + 1):
                for name in names if round_index % 2 == 0 else reversed(names):
                    synchronize(device)
                    start = time.perf_counter()
                    output = models[name].generate(prompt, **generate_kwargs)
                    synchronize(device)
                    if output.shape[1] != prompt_len + new_tokens:
                        raise RuntimeError(
                            f"{name} generated {output.shape[1] - prompt_len} tokens instead of {new_tokens}."
                        )
                    if round_index > 0:  # the first round warms up (and compiles)
                        times[name].append(time.perf_counter() - start)
    finally:
        for name, model in models.items():
            if static_compiled and "forward" in vars(model):
                del model.forward  # back to the class's uncompiled forward
            model.train(was_training[name])
    return {
        name: {
            "median_s": statistics.median(ts),
            "tokens_per_s": batch_size * new_tokens / statistics.median(ts),
            "times_s": ts,
        }
        for name, ts in times.items()
    }


def _compile_mode(device: torch.device) -> str:
    # CUDA graphs remove per-token launch overhead on GPUs; on CPU there is nothing to capture.
    return "reduce-overhead" if device.type == "cuda" else "default"


def _read_proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field.")


def _cpu_training_memory_in_child(name: str, shape: BenchmarkShape, steps: int, seed: int, dtype: str) -> int:
    """Runs in a fresh process: peak RSS of building the model and training it, over the RSS before."""
    torch.manual_seed(seed)
    warm = torch.randn(8, 8, requires_grad=True)  # torch's one-time set-up is not the model's memory
    (warm @ warm).sum().backward()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    baseline = _read_proc_status_kib("VmRSS")
    model = build_model(name, shape, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    input_ids = random_tokens(shape.batch_size, shape.seq_len, shape.vocab_size, seed, torch.device("cpu"))
    for _ in range(steps):
        train_step(model, optimizer, input_ids, dtype)
    return (_read_proc_status_kib("VmHWM") - baseline) * 1024


def measure_training_memory(
    name: str, shape: BenchmarkShape, device: torch.device, steps: int = 2, seed: int = 0, dtype: str = "float32"
) -> int:
    """Peak bytes a training run needs: parameters, gradients, AdamW state, activations and temporaries.

    On GPU: `torch.cuda.max_memory_allocated` over building the model and `steps` training steps. On CPU:
    the peak RSS of a fresh process (forked from a server that only imported the libraries, so no freed
    memory of an earlier model can be reused) over its RSS before the model was built.
    """
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        model = build_model(name, shape, seed=seed).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        input_ids = random_tokens(shape.batch_size, shape.seq_len, shape.vocab_size, seed, device)
        for _ in range(steps):
            train_step(model, optimizer, input_ids, dtype)
        peak = torch.cuda.max_memory_allocated(device) - baseline
        del model, optimizer
        gc.collect()
        torch.cuda.empty_cache()
        return peak
    if not os.path.exists("/proc/self/clear_refs"):
        raise RuntimeError("Measuring CPU memory needs Linux's /proc/self/clear_refs and VmHWM.")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["albertagpt.benchmark"])
    with context.Pool(1) as pool:
        return pool.apply(_cpu_training_memory_in_child, (name, shape, steps, seed, dtype))


def scaling_over_seq_len(
    models: dict[str, PreTrainedModel], shape: BenchmarkShape, settings: BenchmarkSettings, device: torch.device
) -> list[dict[str, Any]]:
    """Training tokens/s at each sequence length, with the tokens per step held at the main shape's."""
    rows = []
    for seq_len in settings.scaling_seq_lens:
        batch_size = max(1, shape.tokens_per_step // seq_len)
        input_ids = random_tokens(batch_size, seq_len, shape.vocab_size, settings.seed, device)
        measured = measure_training(models, input_ids, settings.scaling_steps, 1, settings.dtype)
        rows.append(
            {
                "seq_len": seq_len,
                "batch_size": batch_size,
                "tokens_per_s": {name: result["tokens_per_s"] for name, result in measured.items()},
            }
        )
    return rows


def scaling_over_depth(
    shape: BenchmarkShape, settings: BenchmarkSettings, device: torch.device
) -> list[dict[str, Any]]:
    """AlbertAGPT's parameters and step time at each depth (one shared block), next to GPT-2's parameters."""
    rows = []
    for depth in settings.scaling_depths:
        deep = replace(shape, num_layers=depth)
        model = build_model("albertagpt", deep, seed=settings.seed).to(device)
        input_ids = random_tokens(deep.batch_size, deep.seq_len, deep.vocab_size, settings.seed, device)
        measured = measure_training({"albertagpt": model}, input_ids, settings.scaling_steps, 1, settings.dtype)
        rows.append(
            {
                "num_layers": depth,
                "parameters": {name: count_parameters(name, deep) for name in ("albertagpt", "gpt2")},
                "albertagpt_step_s": measured["albertagpt"]["median_step_s"],
                "albertagpt_tokens_per_s": measured["albertagpt"]["tokens_per_s"],
            }
        )
        del model
        gc.collect()
    return rows


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "cpu": _cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
        # other work on the machine slows both models alike (interleaved), but not by a fixed factor
        "load_average_1min": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compute_ratios(results: dict[str, Any], peer: str) -> dict[str, float]:
    """AlbertAGPT / `peer` per metric. Higher is better except for `flops_per_token` and `peak_train_memory`."""
    training, memory = results["training"], results["memory"]
    ratios = {
        key: training["albertagpt"][key] / training[peer][key] for key in ("tokens_per_s", "mfu", "flops_per_token")
    }
    ratios["training_tokens_per_s"] = ratios.pop("tokens_per_s")
    ratios["peak_train_memory"] = memory["albertagpt"] / memory[peer]
    for section, prefix, _ in GENERATION_SECTIONS:
        for batch_key, per_model in results.get(section, {}).items():
            ratios[f"{prefix}_tokens_per_s_{batch_key}"] = (
                per_model["albertagpt"]["tokens_per_s"] / per_model[peer]["tokens_per_s"]
            )
    return ratios


def round_ratio_quartiles(times: list[float], peer_times: list[float]) -> list[float]:
    """First quartile, median and third quartile of the peer's time over AlbertAGPT's in each interleaved round.

    Both models of a round ran back to back, so noise that lasts longer than a round cancels in its ratio; the
    spread of these ratios shows how far one measurement of the ratio can be trusted.
    """
    ratios = [peer_time / time_ for time_, peer_time in zip(times, peer_times, strict=True)]
    first, median, third = statistics.quantiles(ratios, n=4, method="inclusive")
    return [first, median, third]


def compute_round_ratios(results: dict[str, Any], peer: str, min_rounds: int = 3) -> dict[str, list[float]]:
    """`round_ratio_quartiles` of every timed comparison of at least `min_rounds` rounds (fewer make no spread),
    under the keys of `compute_ratios`."""
    training = results["training"]
    timed = {"training_tokens_per_s": (training["albertagpt"]["step_times_s"], training[peer]["step_times_s"])}
    for section, prefix, _ in GENERATION_SECTIONS:
        for batch_key, per_model in results.get(section, {}).items():
            pair = (per_model["albertagpt"]["times_s"], per_model[peer]["times_s"])
            timed[f"{prefix}_tokens_per_s_{batch_key}"] = pair
    return {
        key: round_ratio_quartiles(times, peer_times)
        for key, (times, peer_times) in timed.items()
        if len(times) >= min_rounds
    }


def evaluate_targets(ratios: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each target in TARGETS against the measured ratio (memory: AlbertAGPT / GPT-2 must be <= 1)."""
    verdicts = {}
    for key, threshold in TARGETS.items():
        if key not in ratios:
            continue
        value = ratios[key]
        met = value <= threshold if key == "peak_train_memory" else value >= threshold
        verdicts[key] = {"ratio": value, "target": threshold, "met": met}
    return verdicts


def allow_recompiles() -> AbstractContextManager:
    """The compared models share transformers' forward wrappers, whose compiled code dynamo caches per code object:
    one entry per model, batch size and phase (prefill, decode), more than the default limit of 8."""
    return torch._dynamo.config.patch(recompile_limit=64)


def check_run_is_possible(shape: BenchmarkShape, settings: BenchmarkSettings) -> None:
    """The device exists and every sequence the run will build fits the models' positions: checked before minutes of
    measuring."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` is 'cuda' but no CUDA device is available.")
    for seq_len in settings.scaling_seq_lens:
        if seq_len > shape.max_positions:
            raise ValueError(f"Scaling sequence length {seq_len} exceeds `max_positions` ({shape.max_positions}).")
    if settings.prompt_len + settings.new_tokens > shape.max_positions:
        raise ValueError(
            f"`prompt_len` + `new_tokens` ({settings.prompt_len} + {settings.new_tokens}) exceeds `max_positions` "
            f"({shape.max_positions})."
        )


def run_benchmark(
    shape: BenchmarkShape, settings: BenchmarkSettings, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every measurement of the benchmark, in one process; returns a JSON-serializable dict."""
    check_run_is_possible(shape, settings)
    device = torch.device(settings.device)
    results: dict[str, Any] = {
        "machine": machine_info(device),
        "shape": asdict(shape),
        "settings": asdict(settings),
        "models": list(MODEL_NAMES),
        "peer": PEER,
    }
    results["parameters"] = {name: count_parameters(name, shape) for name in MODEL_NAMES}
    models = {name: build_model(name, shape, seed=settings.seed).to(device) for name in MODEL_NAMES}
    input_ids = random_tokens(shape.batch_size, shape.seq_len, shape.vocab_size, settings.seed, device)

    log("measuring the matmul peak ...")
    matmul_size = settings.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = measure_matmul_peak(device, settings.dtype, matmul_size)
    results["matmul_peak_flops"] = peak

    log("counting FLOPs ...")
    flops = {name: count_training_flops(model, input_ids, settings.dtype) for name, model in models.items()}

    log("measuring training ...")
    training = measure_training(models, input_ids, settings.train_steps, settings.warmup_steps, settings.dtype)
    for name, result in training.items():
        result["flops_per_step"] = flops[name]
        result["flops_per_token"] = flops[name] / shape.tokens_per_step
        result["mfu"] = flops[name] / result["median_step_s"] / peak
    results["training"] = training

    if settings.compile:
        log("measuring compiled training ...")
        compiled = {name: torch.compile(model) for name, model in models.items()}
        steps, warmup = settings.train_steps, settings.warmup_steps + 1  # the first step compiles
        with allow_recompiles():
            results["training_compiled"] = measure_training(compiled, input_ids, steps, warmup, settings.dtype)
        for name, result in results["training_compiled"].items():
            result["mfu"] = flops[name] / result["median_step_s"] / peak
        del compiled

    log("measuring generation ...")
    results["generation"] = {
        f"batch_{batch_size}": measure_generation(
            models, batch_size, settings.prompt_len, settings.new_tokens, settings.generate_repeats,
            settings.seed, settings.dtype,
        )
        for batch_size in settings.generate_batch_sizes
    }  # fmt: skip
    if settings.compile:
        log("measuring static-cache compiled generation ...")
        with allow_recompiles():
            results["generation_static_compiled"] = {
                f"batch_{batch_size}": measure_generation(
                    models, batch_size, settings.prompt_len, settings.new_tokens, settings.generate_repeats,
                    settings.seed, settings.dtype, static_compiled=True,
                )
                for batch_size in settings.generate_batch_sizes
            }  # fmt: skip

    log("measuring scaling over sequence length ...")
    results["scaling_seq_len"] = scaling_over_seq_len(models, shape, settings, device)
    del models
    gc.collect()

    log("measuring peak training memory ...")
    results["memory"] = {
        name: measure_training_memory(name, shape, device, seed=settings.seed, dtype=settings.dtype)
        for name in MODEL_NAMES
    }

    log("measuring scaling over depth ...")
    results["scaling_depth"] = scaling_over_depth(shape, settings, device)
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]

    results["ratios"] = {peer: compute_ratios(results, peer) for peer in MODEL_NAMES[1:]}
    results["round_ratios"] = {peer: compute_round_ratios(results, peer) for peer in MODEL_NAMES[1:]}
    results["targets"] = evaluate_targets(results["ratios"][PEER])
    return results


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table: one row per metric, one column per model, then AlbertAGPT's ratio to each GPT-2 (for timed
    metrics followed by the interquartile range of the per-round ratios, `round_ratio_quartiles`)."""
    names = results["models"]
    peers = names[1:]
    header = ["metric", *names, *(f"albertagpt / {peer}" for peer in peers), "target (vs gpt2)"]
    rows = []

    def add(metric: str, values: dict[str, float], fmt: str, ratio_key: str | None) -> None:
        ratios = []
        for peer in peers:
            text = f"{results['ratios'][peer][ratio_key]:.2f}x" if ratio_key else ""
            spread = results.get("round_ratios", {}).get(peer, {}).get(ratio_key)
            if spread:
                text += f" ({spread[0]:.2f}-{spread[2]:.2f})"
            ratios.append(text)
        target = results["targets"].get(ratio_key) if ratio_key else None
        verdict = ""
        if target:
            sign = "<=" if ratio_key == "peak_train_memory" else ">="
            verdict = f"{sign} {target['target']:.2f}x: {'met' if target['met'] else 'NOT met'}"
        rows.append([metric, *(format(values[name], fmt) for name in names), *ratios, verdict])

    add("parameters", results["parameters"], ",d", None)
    training = results["training"]
    add("training tokens/s", {n: training[n]["tokens_per_s"] for n in names}, ".0f", "training_tokens_per_s")
    add("training GFLOPs/token", {n: training[n]["flops_per_token"] / 1e9 for n in names}, ".3f", "flops_per_token")
    add("MFU", {n: 100 * training[n]["mfu"] for n in names}, ".1f", "mfu")
    if "training_compiled" in results:
        compiled = results["training_compiled"]
        add("compiled training tokens/s", {n: compiled[n]["tokens_per_s"] for n in names}, ".0f", None)
    for section, prefix, label in GENERATION_SECTIONS:
        for batch_key, per_model in results.get(section, {}).items():
            values = {n: per_model[n]["tokens_per_s"] for n in names}
            add(f"{label}, {batch_key.replace('_', ' ')}", values, ".1f", f"{prefix}_tokens_per_s_{batch_key}")
    add("peak train memory (MiB)", {n: results["memory"][n] / 2**20 for n in names}, ".0f", "peak_train_memory")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    settings = results["settings"]
    if results["shape"] != asdict(BenchmarkShape()) or (settings["device"], settings["dtype"]) != ("cpu", "float32"):
        lines.append(
            "\nThe targets are stated for the default shape on a CPU in float32: here they are for reference."
        )
    return "\n".join(lines)


def format_scaling_tables(results: dict[str, Any]) -> str:
    names = results["models"]
    lines = [
        "| seq len | batch | " + " | ".join(f"{n} tokens/s" for n in names) + " |",
        "|" + "---|" * (2 + len(names)),
    ]
    for row in results["scaling_seq_len"]:
        values = " | ".join(f"{row['tokens_per_s'][n]:.0f}" for n in names)
        lines.append(f"| {row['seq_len']} | {row['batch_size']} | {values} |")
    lines += [
        "",
        "| layers | albertagpt params | gpt2 params | albertagpt step (s) | step / layer (ms) |",
        "|---|---|---|---|---|",
    ]
    for row in results["scaling_depth"]:
        per_layer = 1e3 * row["albertagpt_step_s"] / row["num_layers"]
        lines.append(
            f"| {row['num_layers']} | {row['parameters']['albertagpt']:,d} | {row['parameters']['gpt2']:,d} | "
            f"{row['albertagpt_step_s']:.3f} | {per_layer:.1f} |"
        )
    return "\n".join(lines)


def check_output_paths(output: str | Path, plot: str | Path | None) -> None:
    """Where the results and the plot will go, checked before minutes of measuring: a folder, or an image format
    matplotlib cannot write, would otherwise fail only after them, and lose the results."""
    from matplotlib.backend_bases import FigureCanvasBase

    for path in (output, plot):
        if path is not None and (Path(path).is_dir() or Path(path).parent.is_file()):
            raise ValueError(f"{str(path)!r} cannot be written as a file: it is a folder, or its folder is a file.")
    formats = FigureCanvasBase.get_supported_filetypes()
    if plot is not None and Path(plot).suffix.lstrip(".").lower() not in formats:
        raise ValueError(f"Plot {str(plot)!r}: matplotlib writes only {', '.join(sorted(formats))} files.")


def save_results(results: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Three panels: speed relative to GPT-2, tokens/s over sequence length, cost and size over depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results["models"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))

    metrics = ["training_tokens_per_s", "mfu"] + [key for key in results["ratios"][PEER] if key.startswith("generate")]
    labels = [key.replace("_tokens_per_s", "").replace("_", " ") for key in metrics] + ["memory saved"]
    width = 0.38
    for offset, peer in zip((-width / 2, width / 2), names[1:], strict=True):
        ratios = results["ratios"][peer]
        values = [ratios[key] for key in metrics] + [1 / ratios["peak_train_memory"]]  # higher is better everywhere
        left.bar([i + offset for i in range(len(values))], values, width, label=f"vs {peer}")
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("AlbertAGPT's advantage (x; memory: GPT-2's / AlbertAGPT's)", fontsize=8)
    left.set_title("AlbertAGPT relative to GPT-2")
    left.legend(fontsize=8)

    seq_lens = [row["seq_len"] for row in results["scaling_seq_len"]]
    for name in names:
        middle.plot(
            seq_lens, [row["tokens_per_s"][name] for row in results["scaling_seq_len"]], marker="o", label=name
        )
    middle.set_xscale("log", base=2)
    middle.set_xlabel("sequence length (tokens per step fixed)")
    middle.set_ylabel("training tokens/s")
    middle.set_title("Training throughput over sequence length")
    middle.legend(fontsize=8)

    depths = [row["num_layers"] for row in results["scaling_depth"]]
    right.plot(depths, [row["albertagpt_step_s"] for row in results["scaling_depth"]], marker="o", color="C0",
               label="AlbertAGPT step time (s)")  # fmt: skip
    right.set_xlabel("layers (AlbertAGPT: one shared block)")
    right.set_ylabel("training step time (s)")
    params_axis = right.twinx()
    for name, color in (("albertagpt", "C2"), ("gpt2", "C3")):
        params = [row["parameters"][name] / 1e6 for row in results["scaling_depth"]]
        params_axis.plot(depths, params, marker="s", linestyle="--", color=color, label=f"{name} parameters (M)")
    params_axis.set_ylabel("parameters (M)")
    right.set_title("Depth: time grows, shared parameters do not")
    handles = right.get_legend_handles_labels()[0] + params_axis.get_legend_handles_labels()[0]
    labels = right.get_legend_handles_labels()[1] + params_axis.get_legend_handles_labels()[1]
    right.legend(handles, labels, fontsize=8, loc="upper left")

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "BenchmarkShape",
    "BenchmarkSettings",
    "MODEL_NAMES",
    "QUICK_SHAPE",
    "QUICK_SETTINGS",
    "build_model",
    "count_parameters",
    "count_training_flops",
    "measure_matmul_peak",
    "measure_training",
    "measure_generation",
    "measure_training_memory",
    "scaling_over_seq_len",
    "scaling_over_depth",
    "run_benchmark",
    "compute_ratios",
    "compute_round_ratios",
    "round_ratio_quartiles",
    "evaluate_targets",
    "format_table",
    "check_output_paths",
    "format_scaling_tables",
    "save_results",
    "plot_results",
]
