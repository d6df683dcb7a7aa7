"""Loads a saved AlbertAGPT split across the processes by transformers' native parallelism.

    torchrun --nproc_per_node 2 tests/parallel_load_worker.py {tp,fsdp} MODEL_DIR OUT_FILE     (CPU, gloo)

`tp` applies the config's `base_model_tp_plan`, `fsdp` its `base_model_fsdp_plan` (FSDP2). Rank 0 saves the logits
of a fixed batch, a greedy continuation and how the model was split; `tests/test_save_load.py` compares them with
the same model on one process.
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from transformers.distributed import DistributedConfig

from albertagpt import AlbertAGPTForCausalLM

PARALLELISMS = {"tp": DistributedConfig(tp_plan="auto"), "fsdp": DistributedConfig(fsdp_size=2)}


def fixed_batch(vocab_size: int) -> torch.Tensor:
    return (torch.arange(2 * 6).view(2, 6) * 7 + 3) % vocab_size


def main(parallelism: str, model_dir: str, out_file: str) -> None:
    model = AlbertAGPTForCausalLM.from_pretrained(model_dir, distributed_config=PARALLELISMS[parallelism])
    input_ids = fixed_batch(model.config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids).logits
    continuation = model.generate(input_ids[:1], max_new_tokens=5, min_new_tokens=5, do_sample=False)
    local_shapes = {
        name: list(parameter.to_local().shape)
        for name, parameter in model.named_parameters()
        if hasattr(parameter, "to_local")
    }
    fsdp_units = [name for name, module in model.named_modules() if isinstance(module, FSDPModule)]
    tied = model.lm_head.weight is model.model.embeddings.word_embeddings.weight
    if dist.get_rank() == 0:
        torch.save(
            {
                "logits": logits,
                "continuation": continuation,
                "local_shapes": local_shapes,
                "fsdp_units": fsdp_units,
                "tied": tied,
            },
            out_file,
        )
    # Without it, a process that finishes first can tear down gloo under the other one (SIGABRT at exit).
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
