"""Loads a saved AlbertAGPT with its tensor-parallel plan (`base_model_tp_plan`) across the processes.

    torchrun --nproc_per_node 2 tests/tp_worker.py MODEL_DIR OUT_FILE     (CPU, gloo)

Rank 0 saves the logits of a fixed batch, a greedy continuation and the local shapes of the sharded projections;
`tests/test_save_load.py` compares them with the same model on one process.
"""

import sys

import torch
import torch.distributed as dist
from transformers.distributed import DistributedConfig

from albertagpt import AlbertAGPTForCausalLM


def fixed_batch(vocab_size: int) -> torch.Tensor:
    return (torch.arange(2 * 6).view(2, 6) * 7 + 3) % vocab_size


def main(model_dir: str, out_file: str) -> None:
    model = AlbertAGPTForCausalLM.from_pretrained(model_dir, distributed_config=DistributedConfig(tp_plan="auto"))
    input_ids = fixed_batch(model.config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids).logits
    continuation = model.generate(input_ids[:1], max_new_tokens=5, min_new_tokens=5, do_sample=False)
    local_shapes = {
        name: list(parameter.to_local().shape)
        for name, parameter in model.named_parameters()
        if hasattr(parameter, "to_local") and name.startswith("model.groups.")
    }
    if dist.get_rank() == 0:
        torch.save({"logits": logits, "continuation": continuation, "local_shapes": local_shapes}, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
