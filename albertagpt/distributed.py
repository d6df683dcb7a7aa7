"""How AlbertAGPT is sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`).

Two rules come from the architecture:
- a shared block is applied several times per forward pass, so it must be one unit of its own (its
  weights are gathered once per application and all its gradients land in one reduce-scatter);
- the LM head decodes with the token embedding matrix, so the embeddings and the head must sit in one
  unit (FSDP refuses a parameter shared by two units): both stay in the root unit.

`configs/accelerate/fsdp.yaml` asks Accelerate for the same plan (`TRANSFORMER_BASED_WRAP` on
`AlbertAGPTLayer`, the classes in `FSDP_UNIT_CLASSES`); `apply_fully_shard` applies it directly, e.g.
under `torchrun` on CPU with gloo, where Accelerate does not run FSDP.
"""

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from .modeling_albertagpt import AlbertAGPTLayer, AlbertAGPTPreTrainedModel

FSDP_UNIT_CLASSES = (AlbertAGPTLayer.__name__,)


def fsdp_wrap_plan(model: AlbertAGPTPreTrainedModel) -> list[nn.Module]:
    """The modules to shard, innermost first: every weight group (shared block), then the whole model."""
    return [*model.base_model.groups, model]


def apply_fully_shard(model: AlbertAGPTPreTrainedModel, mesh: DeviceMesh | None = None, **kwargs) -> nn.Module:
    """Shards `model` in place with FSDP2 along `fsdp_wrap_plan`; `kwargs` go to every `fully_shard` call."""
    for module in fsdp_wrap_plan(model):
        fully_shard(module, mesh=mesh, **kwargs)
    return model


__all__ = ["FSDP_UNIT_CLASSES", "apply_fully_shard", "fsdp_wrap_plan"]
