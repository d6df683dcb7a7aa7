"""Trains a tiny AlbertAGPT for a few AdamW steps, sharded with the package's FSDP2 plan.

    torchrun --nproc_per_node 2 tests/fsdp2_worker.py OUT_DIR     (CPU, gloo)

Rank 0 writes OUT_DIR/weights.pt (the full state dict) and OUT_DIR/plan.json (what the sharding looked like).
`tests/test_training.py` runs it and compares with `train_steps` on one process over the same global batches.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from helpers import tiny_config
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from albertagpt import AlbertAGPTForCausalLM
from albertagpt.distributed import apply_fully_shard

STEPS, GLOBAL_BATCH, LENGTH = 3, 4, 16


def fsdp_test_model() -> AlbertAGPTForCausalLM:
    torch.manual_seed(0)
    # Four applications of two shared blocks: each block is applied twice per forward pass.
    return AlbertAGPTForCausalLM(tiny_config(num_hidden_layers=4, num_hidden_groups=2, initializer_range=0.2))


def global_batches(vocab_size: int) -> torch.Tensor:
    return torch.randint(3, vocab_size, (STEPS, GLOBAL_BATCH, LENGTH), generator=torch.Generator().manual_seed(1))


def train_steps(model: torch.nn.Module, batches: torch.Tensor, rank: int = 0, world_size: int = 1) -> None:
    """AdamW on each global batch; a rank takes its contiguous share (FSDP averages gradients over ranks)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for batch in batches:
        local = batch.chunk(world_size)[rank]
        model(input_ids=local, labels=local).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = fsdp_test_model()
    apply_fully_shard(model, init_device_mesh("cpu", (world_size,)))
    plan = {
        "groups_are_units": [isinstance(group, FSDPModule) for group in model.model.groups],
        "root_is_unit": isinstance(model, FSDPModule),
        "embeddings_are_not_a_unit": not isinstance(model.model.embeddings, FSDPModule),
        "tied": model.lm_head.weight is model.model.embeddings.word_embeddings.weight,
        "sharded": all(isinstance(p, DTensor) for p in model.parameters()),
        "local_rows": model.model.embeddings.word_embeddings.weight.to_local().shape[0],
    }
    train_steps(model, global_batches(model.config.vocab_size), rank, world_size)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(state, out_dir / "weights.pt")
        (out_dir / "plan.json").write_text(json.dumps(plan))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
